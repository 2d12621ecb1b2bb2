"""Starting a transfer and taking it up to the outbox: prepared → consent-checked → packaged →
queued (or cancelled / invalid on the way).

Each step is a function of one open write transaction: `$transfer` runs all of them in the
request's transaction (the caller sees the outcome at once), a bulk run gives each its own
(`advance`), so a crash between steps resumes at the step that did not commit. Every step moves
the row with a compare-and-set on its state: two workers cannot both take a step.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection, insert, select, update

from ekd.audit import log
from ekd.audit.record import AuditRecord, PatientRef
from ekd.errors import Forbidden, InvalidRequest, Unprocessable
from ekd.exchange.directory import DirectoryError
from ekd.exchange.trust import CertificateRejected
from ekd.fhir.naming_systems import bsn_of
from ekd.interaction.base import Services
from ekd.interaction.write import validation_issues
from ekd.security import policy
from ekd.security.principal import Principal, Role
from ekd.store.resources import as_utc, instant, now
from ekd.store.schema import transfer, transfer_outbox
from ekd.transfer import consent, package, seal
from ekd.transfer.context import Exchange
from ekd.transfer.states import FINAL, IllegalTransition, State, check

#: The client id under which the transfer worker's own steps are audited.
WORKER_CLIENT = "ekd-transfer"


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str
    element: str | None = None

    def as_json(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.element:
            out["element"] = self.element
        return out


def worker_principal(org: str) -> Principal:
    return Principal(org=org, client_id=WORKER_CLIENT, role=Role.SYSTEM, scopes=())


def audit(conn: Connection, principal: Principal, row: dict, *, status: int, action: str,
          step: str, bsn: str | None = None, description: str | None = None) -> None:
    """A NEN 7513 record of a transfer step (BALP: the disclosure at the sender's side)."""
    log.append(conn, [AuditRecord(
        interaction="transfer", action=action, status=status, principal=principal,
        recorded=now(), resource_type="Patient",
        entities=(f"Patient/{row['patient_id']}",),
        patients=(PatientRef(f"Patient/{row['patient_id']}", bsn),),
        operation=step, description=description,
        extra={"transfer": row["id"], "recipient": row["recipient"]})])


def check_request(exchange: Exchange, principal: Principal, reason: str) -> None:
    """Who may send, and why: the server's own organisation, a role that may read clinical
    content (a transfer discloses all of it), a known reason."""
    exchange.require_sender(principal.org)
    if not policy.allows(principal, "Observation", "r"):
        raise Forbidden("Transferring a dossier discloses clinical content, which this role "
                        "may not read")
    if reason not in package.REASONS:
        raise InvalidRequest(f"reason must be one of {', '.join(package.REASONS)}",
                             expression="reason")


def new_row(exchange: Exchange, *, patient_id: str, recipient: str, reason: str,
            job_id: str | None, requested_by: str) -> dict:
    """A transfer row in state `prepared` (the one shape, for single and bulk transfers)."""
    moment = now()
    return {"id": str(uuid.uuid4()), "org": exchange.ura, "patient_id": patient_id,
            "recipient": recipient, "reason": reason, "state": State.PREPARED.value,
            "job_id": job_id, "created": moment, "updated": moment,
            "requested_by": requested_by, "attempts": 0}


def check_recipient(exchange: Exchange, recipient: str) -> None:
    """The recipient is another organisation the (signed) directory knows."""
    if recipient == exchange.ura:
        raise InvalidRequest("An organisation cannot transfer a dossier to itself",
                             expression="recipient")
    try:
        exchange.recipient(recipient)
    except DirectoryError as exc:
        raise Unprocessable(f"Recipient {recipient}: {exc}", expression="recipient") from None


def start(exchange: Exchange, conn: Connection, *, principal: Principal, patient_id: str,
          recipient: str, reason: str, job_id: str | None = None) -> dict:
    """A new transfer row in state `prepared`; refuses a request that can never be sent."""
    check_request(exchange, principal, reason)
    check_recipient(exchange, recipient)
    row = new_row(exchange, patient_id=patient_id, recipient=recipient, reason=reason,
                  job_id=job_id, requested_by=principal.user_id or principal.client_id)
    conn.execute(insert(transfer).values(**row))
    return row


def load(conn: Connection, transfer_id: str) -> dict | None:
    found = conn.execute(select(transfer).where(transfer.c.id == transfer_id)).mappings().first()
    return dict(found) if found is not None else None


def move(conn: Connection, row: dict, new: State, **values: object) -> dict:
    """Compare-and-set the state; IllegalTransition when the row moved on meanwhile."""
    check(row["state"], new)
    done = conn.execute(update(transfer).where(
        transfer.c.id == row["id"], transfer.c.state == row["state"]
    ).values(state=new.value, updated=now(), **values)).rowcount
    if done != 1:
        raise IllegalTransition(f"Transfer {row['id']} moved on concurrently")
    return {**row, **values, "state": new.value}


def check_consent(services: Services, exchange: Exchange, conn: Connection, row: dict,
                  principal: Principal) -> dict:
    """prepared → consent-checked, or cancelled (objection) / invalid (no child, bad BSN)."""
    store = services.store(conn, row["org"])
    patient = store.current("Patient", row["patient_id"])
    if patient is None or patient.deleted or patient.content is None:
        return _stop(conn, row, State.INVALID, principal, [Problem(
            "missing-patient", f"Patient/{row['patient_id']} is not known", "patient")])
    bsn = bsn_of(patient.content)
    if not consent.valid_bsn(bsn):
        return _stop(conn, row, State.INVALID, principal, [Problem(
            "invalid-bsn", "The child's BSN fails the 11-test", "Patient.identifier")])
    state = consent.transfer_consent(services.search, store, row["patient_id"])
    if state.objection:
        return _stop(conn, row, State.CANCELLED, principal, [Problem(
            "objection", f"An objection to transfer is recorded ({state.consent})",
            "Consent.provision.type")], bsn=bsn)
    return move(conn, row, State.CONSENT_CHECKED)


def make_package(services: Services, exchange: Exchange, conn: Connection, row: dict,
                 principal: Principal) -> dict:
    """consent-checked → packaged: the dossier validated, signed and encrypted once; the bytes
    are kept so every retry sends exactly them. A version validated when it was written, under
    the validation stamp still current, is not validated twice (`ekd.validation.stamp`)."""
    store = services.store(conn, row["org"])
    pks = services.search.compartment_pks(store, row["patient_id"], types=None, since=None)
    resources = store.current_many(pks)
    # What passed validation at write time under the current stamp (same definitions, same
    # settings, same code) passes again: only the rest is validated here.
    stamp = services.validation_stamp() if services.validation_stamp is not None else None
    checked = store.validated_under(pks, stamp) if stamp is not None else set()
    problems = []
    for stored in resources:
        if stored.pk in checked:
            continue
        content = stored.content or {}
        for issue in validation_issues(services, content):
            if issue.severity in ("error", "fatal"):
                where = ", ".join(issue.expression) or None
                problems.append(Problem("invalid-resource", issue.diagnostics,
                                        f"{stored.type}/{stored.id}" + (f" {where}" if where
                                                                       else "")))
    if problems:
        return _stop(conn, row, State.INVALID, principal, problems[:50])
    try:
        entry = exchange.recipient(row["recipient"])
        # Encrypt only to a certificate the trusted root vouches for and nobody revoked.
        exchange.trust.verify([entry.certificate, *exchange.creds.chain[1:]], usage="encrypt")
    except (DirectoryError, CertificateRejected) as exc:
        return _stop(conn, row, State.CANCELLED, principal, [Problem(
            "recipient", f"Recipient {row['recipient']}: {exc}", "recipient")])
    state = consent.transfer_consent(services.search, store, row["patient_id"])
    envelope = package.Envelope(
        transfer_id=row["id"], sender=row["org"], recipient=row["recipient"],
        created=instant(as_utc(row["created"])), reason=row["reason"],
        bds_version=package.BDS_VERSION, patient=f"Patient/{row['patient_id']}")
    bundle = package.build(envelope=envelope, resources=resources,
                           base=services.settings.base_url, consent=state.consent,
                           requested_by=row["requested_by"],
                           recipient_endpoint=entry.endpoint)
    signed = seal.sign_bundle(bundle, exchange.creds)
    token = seal.encrypt(orjson.dumps(signed), entry.certificate)
    digest = hashlib.sha256(token.encode()).hexdigest()
    return move(conn, row, State.PACKAGED, package=token, package_hash=digest,
                resources=len(resources))


def queue(exchange: Exchange, conn: Connection, row: dict) -> dict:
    """packaged → queued, with the outbox row in the same transaction."""
    exchange.work_queued(conn)
    moment = now()
    conn.execute(insert(transfer_outbox).values(
        org=row["org"], message_id=str(uuid.uuid5(uuid.UUID(row["id"]), "package")),
        kind="package", transfer_id=row["id"], recipient=row["recipient"],
        body=row["package"], state="pending", attempts=0, next_attempt=moment,
        created=moment))
    return move(conn, row, State.QUEUED)


STEPS = {State.PREPARED: "consent", State.CONSENT_CHECKED: "package", State.PACKAGED: "queue"}


def step(services: Services, exchange: Exchange, conn: Connection, row: dict,
         principal: Principal) -> dict:
    current = State(row["state"])
    if current is State.PREPARED:
        return check_consent(services, exchange, conn, row, principal)
    if current is State.CONSENT_CHECKED:
        return make_package(services, exchange, conn, row, principal)
    if current is State.PACKAGED:
        return queue(exchange, conn, row)
    return row


def run_to_queue(services: Services, exchange: Exchange, conn: Connection, row: dict,
                 principal: Principal) -> dict:
    """All steps in the caller's transaction (`$transfer`)."""
    while State(row["state"]) in STEPS:
        row = step(services, exchange, conn, row, principal)
    return row


def advance(services: Services, exchange: Exchange, transfer_id: str) -> dict | None:
    """Each step in its own transaction (bulk runs, resumption after a crash)."""
    while True:
        with services.db.write() as conn:
            row = load(conn, transfer_id)
            if row is None or State(row["state"]) not in STEPS:
                return row
            step(services, exchange, conn, row, worker_principal(row["org"]))


def _stop(conn: Connection, row: dict, state: State, principal: Principal,
          problems: list[Problem], *, bsn: str | None = None) -> dict:
    moved = move(conn, row, state, problems=[p.as_json() for p in problems])
    audit(conn, principal, moved, status=409 if state is State.CANCELLED else 422, action="E",
          step=f"transfer-{state.value}", bsn=bsn, description=problems[0].message)
    return moved


def cancel_if_objection(services: Services, conn: Connection, row: dict) -> bool:
    """Right before dispatch: an objection recorded since packaging cancels the transfer."""
    if State(row["state"]) in FINAL:
        return True
    store = services.store(conn, row["org"])
    state = consent.transfer_consent(services.search, store, row["patient_id"])
    if not state.objection:
        return False
    _stop(conn, row, State.CANCELLED, worker_principal(row["org"]), [Problem(
        "objection", f"An objection to transfer was recorded before dispatch ({state.consent})",
        "Consent.provision.type")])
    return True

