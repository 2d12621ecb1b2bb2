"""From a request and its outcome to the audit record NEN 7513 asks for.

`ekd.interaction.route` calls `record`/`failure` for every interaction a caller runs and hands
the records to `ekd.audit.log.append`, in the write's own transaction or, for reads, before the
response leaves. Which patient an interaction concerns is read from the resources it touched:
the Patient itself, or the `subject`/`patient`/`beneficiary` reference of anything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlencode

from ekd.audit.record import AuditRecord, PatientRef
from ekd.errors import FhirError
from ekd.fhir import naming_systems
from ekd.interaction.base import FhirRequest, FhirResponse
from ekd.store.resources import Stored, now

_PATIENT_FIELDS = ("subject", "patient", "beneficiary")


def interaction_code(req: FhirRequest) -> str:
    """The FHIR restful-interaction code (http://hl7.org/fhir/R4/valueset-type-restful-
    interaction.html) of a request."""
    if req.operation is not None:
        return "operation"
    if req.path_op == "_history":
        if req.version is not None:
            return "vread"
        return ("history-instance" if req.id else "history-type" if req.type
                else "history-system")
    if req.type is None:
        return "batch" if req.method == "POST" else "history-system"
    if req.path_op == "_search" or (req.method == "GET" and req.id is None):
        return "search-type"
    return {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
            "POST": "create"}.get(req.method, "operation")


#: BALP: reads are R, searches and operations are E (execute), writes C/U/D.
_ACTION = {"read": "R", "vread": "R", "history-instance": "R", "create": "C", "update": "U",
           "patch": "U", "delete": "D"}


def _patient_reference(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if not isinstance(ref, str) or "Patient/" not in ref:
        return None
    tail = ref[ref.rindex("Patient/"):].split("/")
    return f"Patient/{tail[1]}" if len(tail) >= 2 and tail[1] else None


def patients_of(resources: Iterable[dict]) -> tuple[PatientRef, ...]:
    found: dict[str, str | None] = {}
    for content in resources:
        if content.get("resourceType") == "Patient" and content.get("id"):
            ref = f"Patient/{content['id']}"
            found[ref] = naming_systems.bsn_of(content) or found.get(ref)
            continue
        for name in _PATIENT_FIELDS:
            ref = _patient_reference(content.get(name))
            if ref is not None:
                found.setdefault(ref, None)
    return tuple(PatientRef(ref, bsn) for ref, bsn in found.items())


def _entity(stored: Stored) -> str:
    return f"{stored.type}/{stored.id}/_history/{stored.version}"


def _query(req: FhirRequest) -> str | None:
    params = [(k, v) for k, v in req.params if k not in ("_format", "_pretty")]
    return urlencode(params) if params else None


def record(req: FhirRequest, resp: FhirResponse) -> AuditRecord:
    assert req.principal is not None
    code = interaction_code(req)
    stored = resp.stored
    touched = list(resp.touched)
    if stored is not None and all(s.pk != stored.pk for s in touched):
        touched.insert(0, stored)
    contents = [s.content for s in touched if s.content is not None]
    patients = patients_of(contents)
    if req.type == "Patient" and req.id and not patients:
        patients = (PatientRef(f"Patient/{req.id}"),)
    entities = tuple(dict.fromkeys(_entity(s) for s in touched if code != "search-type"))
    return AuditRecord(
        interaction=code, action=_ACTION.get(code, "E"), status=resp.status,
        principal=req.principal, recorded=now(), resource_type=req.type, entities=entities,
        patients=patients, query=_query(req) if code in ("search-type", "operation") else None,
        operation=f"${req.operation}" if req.operation else None, server=req.base)


def failure(req: FhirRequest, exc: FhirError) -> AuditRecord:
    """An attempt that failed: denied, not found, invalid. What it aimed at is recorded, so an
    attempt on another organisation's child shows up in the log."""
    assert req.principal is not None
    code = interaction_code(req)
    patients: tuple[PatientRef, ...] = ()
    if req.type == "Patient" and req.id:
        patients = (PatientRef(f"Patient/{req.id}"),)
    elif isinstance(req.body, dict):
        patients = tuple(PatientRef(p.reference) for p in patients_of([req.body]))
    entities = (f"{req.type}/{req.id}",) if req.type and req.id else ()
    return AuditRecord(
        interaction=code, action=_ACTION.get(code, "E"), status=exc.status,
        principal=req.principal, recorded=now(), resource_type=req.type, entities=entities,
        patients=patients, query=_query(req) if code in ("search-type", "operation") else None,
        operation=f"${req.operation}" if req.operation else None,
        description=exc.diagnostics[:500], server=req.base)
