"""Patient/$transfer: send this child's dossier to another JGZ organisation (issue #7).

`POST [base]/Patient/[id]/$transfer` with a Parameters body:

- `recipient` (valueIdentifier with the URA system, or valueString: the URA), required;
- `reason` (valueCode: `age4` consultatiebureau → GGD, `move` the family moved, `other`).

The objection check, the BSN 11-test, validation of the whole dossier against the JGZ profiles,
signing, encryption and the outbox row all happen in this request's transaction, so the answer
says where the transfer stands: 202 Accepted when it is queued for the relay (sending happens
in the background; `Location` is its status), 422 when it was stopped (an objection,
an invalid BSN or resource; the transfer row and its audit record are kept all the same).
The answer is a Parameters resource (`transfer`, `state`, `outcome` on refusal). ekd-defined;
there is no standard FHIR operation for a JGZ overdracht.
"""

from __future__ import annotations

from ekd.errors import InvalidRequest, Issue, NotFound, NotSupported
from ekd.fhir import naming_systems
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.operation import Operation, parameters
from ekd.store.resources import ResourceStore
from ekd.transfer import sender
from ekd.transfer.states import State


def _recipient(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("system") in (None, naming_systems.URA):
        found = value.get("value")
        return found if isinstance(found, str) else None
    return None


def transfer(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    exchange = services.exchange
    if exchange is None:
        raise NotSupported("Dossier transfer is not configured on this server "
                           "(EKD_EXCHANGE_* settings)")
    if req.principal is None:
        raise InvalidRequest("$transfer needs an authenticated caller")
    args = dict(parameters(req))
    recipient = _recipient(args.get("recipient"))
    if not recipient or not (len(recipient) == 8 and recipient.isdigit()):
        raise InvalidRequest("recipient must be the URA (8 digits) of the receiving "
                             "organisation", expression="Parameters.parameter[recipient]")
    reason = str(args.get("reason") or "age4")
    patient = store.current("Patient", req.id or "")
    if patient is None or patient.deleted:
        raise NotFound(f"Patient/{req.id} is not known")
    row = sender.start(exchange, store.conn, principal=req.principal, patient_id=patient.id,
                       recipient=recipient, reason=reason)
    row = sender.run_to_queue(services, exchange, store.conn, row, req.principal)
    out: list[dict] = [{"name": "transfer", "valueString": row["id"]},
                       {"name": "state", "valueCode": row["state"]}]
    location = f"{req.base.rsplit('/fhir', 1)[0]}/exchange/transfers/{row['id']}"
    if row["state"] == State.QUEUED:
        return FhirResponse(202, {"resourceType": "Parameters", "parameter": out},
                            location=location, touched=[patient])
    problems = row.get("problems") or []
    issues = [Issue("error", "business-rule" if p.get("code") == "objection" else "invalid",
                    str(p.get("message")), (str(p["element"]),) if p.get("element") else ())
              for p in problems] or [Issue("error", "processing", f"Transfer {row['state']}")]
    outcome = {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}
    out.append({"name": "outcome", "resource": outcome})
    return FhirResponse(422, {"resourceType": "Parameters", "parameter": out},
                        location=location, touched=[patient])


OPERATION = Operation(
    name="transfer",
    handler=transfer,
    levels=frozenset({"instance"}),
    types=frozenset({"Patient"}),
    affects_state=True,
    permission="r",
)
