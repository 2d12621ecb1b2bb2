"""The receiver's manual-review queue: a received dossier whose child matched on BSN but not on
birth date or name waits for a person to decide (TRANSFER.md: never an automatic merge).

Decisions: a new child, a merge into a named child known here, or a rejection (the sender gets a
rejected application receipt). The import itself is audited as the worker's; who decided is a
record of its own, naming the decision.
"""

from __future__ import annotations

from sqlalchemy import select

from ekd.audit import log
from ekd.audit.record import AuditRecord, PatientRef
from ekd.errors import Conflict, InvalidRequest, NotFound
from ekd.interaction.base import Services
from ekd.security.principal import Principal
from ekd.store.resources import now
from ekd.store.schema import transfer_inbox
from ekd.transfer import importer
from ekd.transfer.context import Exchange


def resolve(services: Services, exchange: Exchange, pk: int, decision: str,
            principal: Principal) -> tuple[str, str | None]:
    """Carry out `decision` ("new", "Patient/<id>" or "reject"): the inbox state it ends in and
    the local child."""
    with services.db.read() as conn:
        found = conn.execute(select(transfer_inbox).where(
            transfer_inbox.c.org == exchange.ura, transfer_inbox.c.pk == pk)).mappings().first()
        if decision.startswith("Patient/"):
            local = services.store(conn, exchange.ura).current(
                "Patient", decision.removeprefix("Patient/"))
            if local is None or local.deleted:
                raise NotFound(f"{decision} is not known in organisation {exchange.ura}")
        elif decision not in ("new", "reject"):
            raise InvalidRequest("decision must be new, reject or Patient/<id>",
                                 expression="decision")
    if found is None:
        raise NotFound(f"No received dossier {pk}")
    if found["state"] != "review":
        raise Conflict(f"Received dossier {pk} is {found['state']}, not waiting for review")
    row = dict(found)
    if decision == "reject":
        result = importer.reject(services, exchange, row, reason="Rejected after review by "
                                 f"{principal.user_name or principal.user_id or 'a reviewer'}")
    else:
        result = importer.process(services, exchange, row, decision=decision)
    if result == "done":
        raise Conflict(f"Received dossier {pk} was decided meanwhile by someone else")
    with services.db.write() as conn:
        child = conn.execute(select(transfer_inbox.c.patient_id).where(
            transfer_inbox.c.pk == pk)).scalar()
        log.append(conn, [AuditRecord(
            interaction="transfer", action="E", status=200 if result == "imported" else 422,
            principal=principal, recorded=now(), resource_type="Patient",
            entities=(f"Patient/{child}",) if child else (),
            patients=(PatientRef(f"Patient/{child}"),) if child else (),
            operation="transfer-review-decision",
            description=None if result == "imported" else f"After review: {result}",
            extra={"transfer": row["transfer_id"], "sender": row["sender"],
                   "decision": decision})])
    return result, child
