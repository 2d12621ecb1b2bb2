"""An audit record as an R4 AuditEvent in the shapes of IHE Basic Audit Log Patterns (BALP).

https://profiles.ihe.net/ITI/BALP/ — RESTful create/read/update/delete/query, with the
"Patient*" variants when a patient is known. ekd follows the shapes but does not claim the
profiles in `meta.profile`: BALP fixes `outcome` to success and asks for the server's network
address, which a failed or internal interaction cannot always give.

The stored AuditEvent is what the hash chain covers (`ekd.audit.log`). It can carry the raw
query string (`entity[query].query`), which may hold a BSN (`identifier=...|<bsn>`); the BSN
itself is never put in the AuditEvent (it lives in `audit_patient`). `for_fhir` masks the
query before an AuditEvent leaves the protected store.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
from datetime import UTC, datetime
from typing import Any

from ekd.audit.record import AuditRecord
from ekd.fhir import naming_systems
from ekd.jgz import CANONICAL

URA_SYSTEM = naming_systems.URA
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OUTCOME = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
BALP_USER_AGENT = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: ekd's JGZ roles (`ekd.security.principal.Role`) as agent.role codes.
ROLE_SYSTEM = f"{CANONICAL}/CodeSystem/jgz-role"
#: Events that are no FHIR RESTful interaction (dossier transfer steps) and operation names.
EKD_EVENT = f"{CANONICAL}/CodeSystem/audit-event-subtype"

#: R4 restful-interaction codes (http://hl7.org/fhir/R4/codesystem-restful-interaction.html).
RESTFUL = frozenset({
    "read", "vread", "update", "patch", "delete", "history", "history-instance",
    "history-type", "history-system", "create", "search", "search-type", "search-system",
    "capabilities", "transaction", "batch", "operation",
})
#: How the acting user took part (BALP UserAgentTypes and the v3 types BALP names per action):
#: reads and queries receive information, creates and updates author it, deletes act as
#: custodian of the record.
_USER_PARTICIPATION = {
    "R": ("IRCP", "information recipient"),
    "E": ("IRCP", "information recipient"),
    "C": ("AUT", "author (originator)"),
    "U": ("AUT", "author (originator)"),
    "D": ("CST", "custodian"),
}
_ACTIONS = frozenset("CRUDE")


def outcome_code(status: int) -> str:
    """HTTP status -> audit-event-outcome: a client's mistake is minor, a server's serious."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def instant(t: datetime) -> str:
    """Milliseconds, UTC: the precision the `recorded` column keeps on both backends."""
    utc = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


@functools.lru_cache(maxsize=4096)
def _network_type(address: str) -> str:
    """Cached: the same few client addresses come back on every request."""
    try:
        ipaddress.ip_address(address)
        kind = "2"  # IP address
    except ValueError:
        kind = "5" if "://" in address else "1"  # URI, machine name
    return kind


def _network(address: str) -> dict:
    return {"address": address, "type": _network_type(address)}


def to_audit_event(record: AuditRecord, id: str) -> dict:
    """The AuditEvent stored for `record` (the BSN is never part of it)."""
    if record.action not in _ACTIONS:
        raise ValueError(f"audit action must be one of C R U D E, not {record.action!r}")
    p = record.principal
    event: dict[str, Any] = {"resourceType": "AuditEvent", "id": id}
    if record.interaction in RESTFUL:
        event["type"] = _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")
        subtype = [_coding(RESTFUL_INTERACTION, record.interaction, record.interaction)]
    else:
        # A transfer step sends a dossier to another organisation: DICOM "Export".
        event["type"] = _coding(DCM, "110106", "Export")
        subtype = [_coding(EKD_EVENT, record.interaction)]
    if record.operation:
        subtype.append(_coding(EKD_EVENT, record.operation))
    event["subtype"] = subtype
    event["action"] = record.action
    event["recorded"] = instant(record.recorded)
    event["outcome"] = outcome_code(record.status)
    if record.status >= 400:
        event["outcomeDesc"] = record.description or f"HTTP {record.status}"

    agents: list[dict] = []
    if p.user_id is not None:
        code, display = _USER_PARTICIPATION[record.action]
        user: dict[str, Any] = {
            "type": {"coding": [_coding(BALP_USER_AGENT, "UserOauthAgent",
                                        "User OAuth Agent participant"),
                                _coding(PARTICIPATION, code, display)]},
            "role": [{"coding": [_coding(ROLE_SYSTEM, str(p.role))]}],
            "who": {"identifier": {"value": p.user_id}},
            "requestor": True,
        }
        if p.user_name:
            user["who"]["display"] = p.user_name
            user["name"] = p.user_name
        if p.token_id:
            user["policy"] = [p.token_id]
        agents.append(user)
    if p.on_behalf_of is not None:
        # The professional the acting user works for (e.g. a doktersassistent for a
        # jeugdarts): responsible for the access, though not the one who made the request.
        behalf: dict[str, Any] = {
            "type": {"coding": [_coding(PARTICIPATION, "RESP", "responsible party")]},
            "who": {"identifier": {"value": p.on_behalf_of}},
            "requestor": False,
        }
        if p.on_behalf_of_name:
            behalf["who"]["display"] = p.on_behalf_of_name
            behalf["name"] = p.on_behalf_of_name
        agents.append(behalf)
    client: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
        "who": {"identifier": {"value": p.client_id}},
        # Without a user, the client (a machine: backend services, mTLS) made the request.
        "requestor": p.user_id is None,
    }
    if p.user_id is None:
        client["role"] = [{"coding": [_coding(ROLE_SYSTEM, str(p.role))]}]
        if p.token_id:
            client["policy"] = [p.token_id]
    if p.source:
        client["network"] = _network(p.source)
    agents.append(client)
    server: dict[str, Any] = {
        "type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": "ekd"},
        "requestor": False,
    }
    if record.server:
        server["who"] = {"identifier": {"system": "urn:ietf:rfc:3986", "value": record.server}}
        server["network"] = _network(record.server)
    agents.append(server)
    agents.append({
        "type": {"coding": [_coding(ROLE_CLASS, "PROV", "healthcare provider")]},
        "who": {"identifier": {"system": URA_SYSTEM, "value": p.org}},
        "requestor": False,
    })
    event["agent"] = agents
    event["source"] = {
        "observer": {"identifier": {"system": URA_SYSTEM, "value": p.org}},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }

    entities: list[dict] = []
    if record.request_id:
        entities.append({"what": {"identifier": {"value": record.request_id}},
                         "type": _coding(BALP_ENTITY_TYPE, "XrequestId", "X-Request-Id")})
    for patient in record.patients:
        entities.append({"what": {"reference": patient.reference},
                         "type": _coding(ENTITY_TYPE, "1", "Person"),
                         "role": _coding(OBJECT_ROLE, "1", "Patient")})
    for reference in record.entities:
        entities.append({"what": {"reference": reference},
                         "type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "4", "Domain Resource")})
    if record.query is not None:
        entities.append({"type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "24", "Query"),
                         "query": base64.b64encode(record.query.encode()).decode()})
    if record.extra:
        # What else identifies the event (a transfer's id, the other organisation): one
        # entity with name/value details, so a transfer can be followed through both logs.
        entities.append({"type": _coding(ENTITY_TYPE, "2", "System Object"),
                         "role": _coding(OBJECT_ROLE, "13", "Security Resource"),
                         "detail": [{"type": key, "valueString": value}
                                    for key, value in sorted(record.extra.items())]})
    if entities:
        event["entity"] = entities
    return event


def for_fhir(event: dict) -> dict:
    """The AuditEvent as it may leave the protected store: query strings masked.

    A query string can contain a BSN (`Patient?identifier=...|<bsn>`); the base64 of it is no
    protection. The element stays, with only a data-absent-reason, so a reader sees that a
    query was recorded.
    """
    entities = event.get("entity")
    if not entities or not any("query" in e for e in entities):
        return event
    out = dict(event)
    out["entity"] = []
    for entity in entities:
        if "query" in entity:
            entity = copy.deepcopy(entity)
            del entity["query"]
            entity["_query"] = {"extension": [{"url": DATA_ABSENT, "valueCode": "masked"}]}
        out["entity"].append(entity)
    return out


def _agent_value(event: dict, system: str, code: str) -> str | None:
    for agent in event.get("agent", ()):
        for coding in agent.get("type", {}).get("coding", ()):
            if coding.get("system") == system and coding.get("code") == code:
                value = agent.get("who", {}).get("identifier", {}).get("value")
                return value if isinstance(value, str) else None
    return None


def indexed(event: dict) -> dict[str, Any]:
    """The `audit_event` columns, derived from the AuditEvent.

    Used both to write them and, in `ekd audit verify`, to check that nobody changed a column
    (say `user_id`, to hide a record from a search by user) without touching the hashed JSON.
    """
    return {
        "id": event["id"],
        "org": event["source"]["observer"]["identifier"]["value"],
        "recorded": parse_instant(event["recorded"]),
        "action": event["action"],
        "subtype": event["subtype"][0]["code"],
        "outcome": event["outcome"],
        "user_id": _agent_value(event, BALP_USER_AGENT, "UserOauthAgent"),
        "client_id": _agent_value(event, DCM, "110153") or "",
    }


def patient_references(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", ())
            if e.get("role", {}).get("code") == "1" and e.get("role", {}).get("system")
            == OBJECT_ROLE and "reference" in e.get("what", {})]
