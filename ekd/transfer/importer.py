"""Processing a received package: decrypt → verify → validate → check consent → match the
child → import in one transaction → signed application receipt (TRANSFER.md).

Everything that only reads the package runs before the database transaction; the import, the
receiver-side Provenance, the origin map, the audit record, the inbox row's new state and the
outbox row carrying the application receipt then commit together. A crash before that commit
leaves the inbox row `received` (its lease runs out) and the next attempt starts from scratch:
nothing is half-imported, nothing imported twice.

Matching (never an automatic merge on BSN alone): a child is merged into an existing Patient
only when BSN, birth date and name all agree; a BSN that is known with another birth date or
name goes to the manual review queue (`ekd transfer review`); an unknown BSN makes a new child.
A merged child's resources are not duplicated: what came from the same sender before (origin
map) is updated, organisations and professionals known here by identifier are reused.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import timedelta

import orjson
from sqlalchemy import Connection, delete, insert, select, update

from ekd.audit import log
from ekd.audit.record import AuditRecord, PatientRef
from ekd.errors import FhirError, Issue
from ekd.fhir import naming_systems
from ekd.fhir.datetime import parse_instant
from ekd.fhir.jsonfmt import check_depth
from ekd.interaction import conditional
from ekd.interaction.base import Services
from ekd.interaction.write import validation_issues
from ekd.search.execute import plan_generically
from ekd.store.resources import ResourceStore, instant, now
from ekd.store.schema import transfer_inbox, transfer_origin, transfer_outbox
from ekd.transfer import claims, consent, failpoints, package, seal
from ekd.transfer.context import Exchange
from ekd.transfer.inbox import receipt_claims
from ekd.transfer.sender import worker_principal

log_ = logging.getLogger("ekd.transfer")

#: Types matched on their identifier instead of imported again (shared reference data).
REUSED_BY_IDENTIFIER = ("Organization", "Practitioner")
IMPORT_EVENT = "dossier-import"


class Rejected(Exception):
    """The package cannot be imported; `problems` go back to the sender in the receipt."""

    def __init__(self, code: str, message: str, element: str | None = None,
                 more: list[dict] | None = None) -> None:
        super().__init__(message)
        first = {"code": code, "message": message, **({"element": element} if element else {})}
        self.problems = [first, *(more or [])]


@dataclass(frozen=True, slots=True)
class Opened:
    bundle: dict
    envelope: package.Envelope
    resources: list[dict]
    patient: dict
    bsn: str
    warnings: list[dict]


def process_due(services: Services, exchange: Exchange, *, limit: int = 1) -> int:
    """One package at a time by default: an import takes long enough that the worker's other
    threads should get the next one, and its receipt goes out before the next import."""
    rows = claims.claim(services.db, transfer_inbox, "pk", [
        transfer_inbox.c.org == exchange.ura, transfer_inbox.c.state == "received"],
        limit=limit, order_by="pk", lease=claims.lease_of(services.settings))
    for row in rows:
        process(services, exchange, row)
    return len(rows)


def process(services: Services, exchange: Exchange, row: dict, *,
            decision: str | None = None) -> str:
    """Process one received package; the inbox state it ends in. `decision` is a reviewer's:
    "new" (a new child) or "Patient/<id>" (merge into that child)."""
    expected = ("received",) if decision is None else ("review",)
    try:
        opened = open_package(services, exchange, row)
    except Rejected as exc:
        with services.db.write() as conn:
            if _still(conn, row["pk"], expected):
                _finish(services, exchange, conn, row, "rejected", exc.problems, None, None)
        return "rejected"
    for attempt in range(3):
        try:
            with services.db.write() as conn:
                if not _still(conn, row["pk"], expected):
                    return "done"
                outcome = _import(services, exchange, conn, row, opened, decision)
                failpoints.hit("receiver-before-import")
            failpoints.hit("receiver-after-import")
            return outcome
        except FhirError as exc:  # a resource the store refused, a lost race on an id
            if attempt == 2:
                with services.db.write() as conn:
                    problems = [{"code": "import", "message": exc.diagnostics}]
                    _finish(services, exchange, conn, row, "rejected", problems, None,
                            opened.bsn)
                return "rejected"
    raise AssertionError("unreachable")


def reject(services: Services, exchange: Exchange, row: dict, *, reason: str) -> str:
    """A reviewer's rejection of a dossier in review: nothing imported, the sender told."""
    with services.db.write() as conn:
        if not _still(conn, row["pk"], ("review",)):
            return "done"
        _finish(services, exchange, conn, row, "rejected",
                [{"code": "review-rejected", "message": reason, "element": "Patient"}],
                None, None)
    return "rejected"


def open_package(services: Services, exchange: Exchange, row: dict) -> Opened:
    """Everything that only reads the package. Rejected with the reason on any failure."""
    try:
        plain = seal.decrypt(row["body"], exchange.creds)
    except seal.SealError as exc:
        raise Rejected(f"jwe-{exc.code}", str(exc), "body") from None
    try:
        bundle = orjson.loads(plain)
        check_depth(bundle, services.settings.max_json_depth)
    except (orjson.JSONDecodeError, FhirError):
        raise Rejected("malformed", "The decrypted package is not JSON within the limits",
                       "Bundle") from None
    if not isinstance(bundle, dict):
        raise Rejected("malformed", "The package is not a Bundle", "Bundle")
    try:
        verified = seal.verify_bundle(bundle, exchange.trust)
    except seal.SealError as exc:
        raise Rejected(f"signature-{exc.code}", str(exc), "Bundle.signature") from None
    try:
        envelope = package.envelope_of(bundle)
        resources = package.dossier(bundle)
    except package.PackageInvalid as exc:
        issue = exc.issues[0]
        raise Rejected("malformed", issue.diagnostics,
                       issue.expression[0] if issue.expression else None) from None
    if not (verified.ura == envelope.sender == row["sender"]):
        raise Rejected("sender", "The signer, the envelope's sender and the delivering "
                       "organisation differ", "MessageHeader.sender")
    if envelope.recipient != exchange.ura:
        raise Rejected("recipient", f"The package is addressed to {envelope.recipient}, not "
                       "to this organisation", "MessageHeader.destination.receiver")
    if envelope.transfer_id != row["transfer_id"]:
        raise Rejected("transfer-id", "The signed transfer id differs from the delivered one",
                       "Bundle.identifier")
    warnings = _age_warnings(services, envelope)
    problems = []
    for index, resource in enumerate(resources):
        for issue in validation_issues(services, resource):
            if issue.severity in ("error", "fatal"):
                problems.append(_problem(index, resource, issue))
    if problems:
        raise Rejected(problems[0]["code"], problems[0]["message"], problems[0].get("element"),
                       problems[1:50])
    patient_id = envelope.patient.removeprefix("Patient/")
    patient = next((r for r in resources if r.get("resourceType") == "Patient"
                    and r.get("id") == patient_id), None)
    if patient is None:
        raise Rejected("missing-patient", "The package does not hold the child it is about",
                       "MessageHeader.focus")
    bsn = naming_systems.bsn_of(patient)
    if not consent.valid_bsn(bsn):
        raise Rejected("invalid-bsn", "The child's BSN fails the 11-test", "Patient.identifier")
    if consent.decide(resources).objection:
        raise Rejected("objection", "The transferred dossier records an objection to transfer",
                       "Consent.provision.type")
    assert bsn is not None
    return Opened(bundle, envelope, resources, patient, bsn, warnings)


def _problem(index: int, resource: dict, issue: Issue) -> dict:
    where = ", ".join(issue.expression)
    element = f"{resource.get('resourceType')}/{resource.get('id')}" + (f" {where}" if where
                                                                          else "")
    return {"code": "invalid-resource", "message": issue.diagnostics, "element": element,
            "entry": index}


def _age_warnings(services: Services, envelope: package.Envelope) -> list[dict]:
    """A replayed old package is deduplicated by its transfer id; its age is flagged too."""
    try:
        created = parse_instant(envelope.created, "Bundle.timestamp")
    except FhirError:
        raise Rejected("malformed", "Bundle.timestamp is not an instant",
                       "Bundle.timestamp") from None
    moment = now()
    if created > moment + timedelta(minutes=5):
        raise Rejected("created", "The package was created in the future", "Bundle.timestamp")
    if moment - created > timedelta(seconds=services.settings.exchange_max_age):
        return [{"code": "stale", "severity": "warning", "element": "Bundle.timestamp",
                 "message": f"The package was created at {envelope.created}, longer ago than "
                            f"{services.settings.exchange_max_age} s"}]
    return []


def _still(conn: Connection, pk: int, states: tuple[str, ...]) -> bool:
    query = select(transfer_inbox.c.state).where(transfer_inbox.c.pk == pk)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    state = conn.execute(query).scalar()
    return state in states


# -- matching and import -----------------------------------------------------------------------


def _fold(text: object) -> str:
    decomposed = unicodedata.normalize("NFKD", str(text or ""))
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c))
                    .casefold().split())


def _name_key(patient: dict) -> tuple[str, str]:
    names = patient.get("name") or [{}]
    name = names[0] if isinstance(names[0], dict) else {}
    return _fold(name.get("family")), _fold(" ".join(name.get("given") or ()))


def match(services: Services, store: ResourceStore, patient: dict, bsn: str
          ) -> tuple[str, str | None, str | None]:
    """("new", None, None) | ("merge", local id, None) | ("review", None, why)."""
    found = conditional.find(services.search, store, "Patient",
                             [("identifier", f"{naming_systems.BSN}|{bsn}")])
    if not found:
        return "new", None, None
    if len(found) > 1:
        return "review", None, "More than one child here has this BSN"
    local = found[0].content or {}
    if local.get("birthDate") != patient.get("birthDate"):
        return "review", None, "A child with this BSN is known here with another birth date"
    if _name_key(local) != _name_key(patient):
        return "review", None, "A child with this BSN is known here with another name"
    return "merge", found[0].id, None


def _import(services: Services, exchange: Exchange, conn: Connection, row: dict,
            opened: Opened, decision: str | None) -> str:
    store = services.store(conn, exchange.ura)
    if decision is None:
        outcome, local_patient, why = match(services, store, opened.patient, opened.bsn)
        if outcome == "review":
            problems = [{"code": "review", "message": str(why), "element": "Patient"}]
            _finish(services, exchange, conn, row, "review", problems, None, opened.bsn)
            return "review"
    elif decision == "new":
        local_patient = None
    else:
        local_patient = decision.removeprefix("Patient/")
    sender_ura = opened.envelope.sender
    mapping, known = _map_ids(services, store, conn, sender_ura, opened, local_patient,
                              fresh=decision == "new")
    refs = _reference_map(opened.bundle, mapping)
    imported: list[str] = []
    origins = []
    new: list[tuple[str, str, dict]] = []
    for resource in opened.resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        target, reuse = mapping[key]
        if reuse:
            continue  # the local Patient of a merge, an organisation known here
        rtype, rid = target.split("/", 1)
        content = _rewrite(resource, refs)
        content["id"] = rid
        meta = {k: v for k, v in (content.get("meta") or {}).items()
                if k not in ("versionId", "lastUpdated", "source")}
        meta["source"] = f"urn:ura:{sender_ura}#{key}"
        content["meta"] = meta
        # A fresh id cannot exist yet; only resources known from an earlier transfer of the
        # same sender are updated in place.
        prev = store.current(rtype, rid, lock=True) if key in known else None
        if prev is None:
            new.append((rtype, rid, content))
        elif not _unchanged(prev.content, content):
            store.update(prev, content)
        imported.append(target)
        origins.append({"org": exchange.ura, "sender": sender_ura, "source": key,
                        "local": target})
    patient_id = mapping[opened.envelope.patient][0].removeprefix("Patient/")
    provenance = _receiver_provenance(exchange, opened, imported, patient_id)
    new.append(("Provenance", provenance["id"], provenance))
    # One batch for everything new (a first transfer: the whole dossier): a handful of
    # statements instead of one round trip per resource, planned like any other time.
    plan_generically(conn)
    store.create_many(new, method="PUT")
    _save_origins(conn, origins)
    _finish(services, exchange, conn, row, "imported", opened.warnings, patient_id, opened.bsn)
    return "imported"


def _unchanged(stored: dict | None, content: dict) -> bool:
    """The current version says what the sender sent again (the practitioners every dossier
    of a sender shares, a child transferred twice): no new version, no reindexing."""
    return stored is not None and _without_version(stored) == _without_version(content)


def _without_version(resource: dict) -> dict:
    meta = {k: v for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}


def _map_ids(services: Services, store: ResourceStore, conn: Connection, sender_ura: str,
             opened: Opened, local_patient: str | None, *, fresh: bool = False
             ) -> tuple[dict[str, tuple[str, bool]], set[str]]:
    """Sender "Type/id" → (local "Type/id", reuse-as-is); and the keys that map to a resource
    imported before (to be updated, not created). `fresh` (a reviewer's "a new child"):
    nothing is taken for what an earlier transfer brought."""
    keys = [f"{r['resourceType']}/{r['id']}" for r in opened.resources]
    known = {} if fresh else {r.source: r.local for r in conn.execute(select(
        transfer_origin.c.source, transfer_origin.c.local).where(
        transfer_origin.c.org == store.org, transfer_origin.c.sender == sender_ura,
        transfer_origin.c.source.in_(keys)))}
    mapping: dict[str, tuple[str, bool]] = {}
    updated: set[str] = set()
    for resource, key in zip(opened.resources, keys, strict=True):
        rtype = resource["resourceType"]
        if key == opened.envelope.patient and local_patient is not None:
            mapping[key] = (f"Patient/{local_patient}", True)
        elif key in known and store.current(*known[key].split("/", 1)) is not None:
            mapping[key] = (known[key], False)
            updated.add(key)
        elif rtype in REUSED_BY_IDENTIFIER and (local := _by_identifier(
                services, store, rtype, resource)) is not None:
            mapping[key] = (local, True)
        else:
            mapping[key] = (f"{rtype}/{uuid.uuid4()}", False)
    return mapping, updated


def _by_identifier(services: Services, store: ResourceStore, rtype: str, resource: dict
                   ) -> str | None:
    for identifier in resource.get("identifier") or ():
        system, value = identifier.get("system"), identifier.get("value")
        if not system or not value:
            continue
        found = conditional.find(services.search, store, rtype,
                                 [("identifier", f"{system}|{value}")])
        if len(found) == 1:
            return f"{rtype}/{found[0].id}"
    return None


def _reference_map(bundle: dict, mapping: dict[str, tuple[str, bool]]) -> dict[str, str]:
    """Every form a reference inside the package may take (relative, or the entry's fullUrl)."""
    refs = {key: target for key, (target, _reuse) in mapping.items()}
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") or {}
        key = f"{resource.get('resourceType')}/{resource.get('id')}"
        if key in mapping and isinstance(entry.get("fullUrl"), str):
            refs[entry["fullUrl"]] = mapping[key][0]
    return refs


#: A `reference` key with a string value, in orjson's compact output. It cannot match inside a
#: string: there every `"` is escaped, and an escaped quote cannot end `reference`.
_REFERENCE = re.compile(rb'"reference":"([^"\\]*(?:\\.[^"\\]*)*)"')


def _rewrite(resource: dict, refs: dict[str, str]) -> dict:
    """A copy of `resource` with every `reference` found in `refs` replaced. Done on the
    serialised form: the copy is needed anyway (a retried import starts from the original),
    and a regular expression finds the few hundred references of a dossier faster than a walk
    over its tens of thousands of nodes."""
    def swap(match: re.Match[bytes]) -> bytes:
        raw = match.group(1)
        value = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
        target = refs.get(value)
        return match.group(0) if target is None else b'"reference":' + orjson.dumps(target)

    return orjson.loads(_REFERENCE.sub(swap, orjson.dumps(resource)))


def _receiver_provenance(exchange: Exchange, opened: Opened, imported: list[str],
                         patient_id: str) -> dict:
    env = opened.envelope
    child = f"Patient/{patient_id}"
    targets = [child, *(t for t in imported if t != child)]
    return {
        "resourceType": "Provenance", "id": str(uuid.uuid4()),
        "target": [{"reference": t} for t in targets],
        "recorded": instant(now()),
        "activity": {"coding": [{"system": package.EVENT_SYSTEM, "code": IMPORT_EVENT,
                                 "display": "JGZ dossier import"}]},
        "reason": [{"coding": [{"system": package.REASON_SYSTEM, "code": env.reason}]}],
        "agent": [
            {"type": {"coding": [{"system": package.PROVENANCE_AGENT, "code": "custodian"}]},
             "who": {"identifier": {"system": naming_systems.URA, "value": exchange.ura}}},
            {"type": {"coding": [{"system": package.PROVENANCE_AGENT, "code": "author"}]},
             "who": {"identifier": {"system": naming_systems.URA, "value": env.sender}}},
        ],
        "entity": [{"role": "source", "what": {"identifier": {
            "system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{env.transfer_id}"}}}],
    }


def _save_origins(conn: Connection, origins: list[dict]) -> None:
    """Replace the origin rows of these sources in two statements (not one per resource)."""
    if not origins:
        return
    org, sender_ura = origins[0]["org"], origins[0]["sender"]
    conn.execute(delete(transfer_origin).where(
        transfer_origin.c.org == org, transfer_origin.c.sender == sender_ura,
        transfer_origin.c.source.in_([o["source"] for o in origins])))
    conn.execute(insert(transfer_origin), origins)


def _finish(services: Services, exchange: Exchange, conn: Connection, row: dict, state: str,
            problems: list[dict], patient_id: str | None, bsn: str | None) -> None:
    """The inbox row's new state, its audit record and the application receipt, together."""
    token = seal.sign_receipt(receipt_claims(
        kind="application", transfer_id=row["transfer_id"], sender_ura=row["sender"],
        recipient=exchange.ura, digest=row["payload_hash"], status=state,
        problems=problems), exchange.creds)
    moment = now()
    conn.execute(update(transfer_inbox).where(transfer_inbox.c.pk == row["pk"]).values(
        state=state, processed=moment, problems=problems or None, patient_id=patient_id,
        application_receipt=token, claimed_until=None))
    message_id = str(uuid.uuid5(uuid.UUID(row["transfer_id"]),
                                f"application-receipt:{row['sender']}:{state}"))
    conn.execute(insert(transfer_outbox).values(
        org=exchange.ura, message_id=message_id, kind="receipt",
        transfer_id=row["transfer_id"], recipient=row["sender"], body=token, state="pending",
        attempts=0, next_attempt=moment, created=moment))
    patient = f"Patient/{patient_id}" if patient_id else None
    log.append(conn, [AuditRecord(
        interaction="transfer", action="C" if state == "imported" else "E",
        status={"imported": 201, "review": 202}.get(state, 422),
        principal=worker_principal(exchange.ura), recorded=moment, resource_type="Patient",
        entities=(patient,) if patient else (),
        patients=(PatientRef(patient, bsn),) if patient else (),
        operation=f"transfer-import-{state}" if state != "imported" else "transfer-import",
        description=str(problems[0].get("message")) if problems and state != "imported"
        else None,
        extra={"transfer": row["transfer_id"], "sender": row["sender"]})])
    log_.info("transfer %s from %s: %s", row["transfer_id"], row["sender"], state)
