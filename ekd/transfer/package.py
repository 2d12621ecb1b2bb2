"""The transfer package: a FHIR message Bundle (http://hl7.org/fhir/R4/messaging.html).

The envelope TRANSFER.md asks for is the message's `MessageHeader`, the first entry: sender
and receiver URA, the reason, the BDS version. The transfer id is `Bundle.identifier` and the
creation time `Bundle.timestamp`. All of it lies inside the signed content, so a signed
package cannot be re-addressed or re-dated. After the header comes the dossier, exactly what
`Patient/$everything` returns (the child, its compartment, and the organisations and
professionals those refer to), then a `Provenance` saying who transfers it, when, and on which
consent.

Resources keep the sender's ids; `fullUrl` is `<sender base>/<type>/<id>`, so the receiver
can resolve every reference inside the package before it assigns its own ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ekd.errors import Issue
from ekd.fhir import naming_systems
from ekd.jgz import CANONICAL
from ekd.store.resources import Stored

#: BDS version the profiles model (DOMAIN.md: BDS JGZ 4.2.0).
BDS_VERSION = "4.2.0"
EVENT_SYSTEM = f"{CANONICAL}/CodeSystem/transfer-event"
EVENT_CODE = "dossier-transfer"
REASON_SYSTEM = f"{CANONICAL}/CodeSystem/transfer-reason"
#: age4: from the consultatiebureau (0-4) to the GGD (4-18); move: the family moved.
REASONS = ("age4", "move", "other")
BDS_VERSION_EXTENSION = f"{CANONICAL}/StructureDefinition/transfer-bds-version"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


@dataclass(frozen=True, slots=True)
class Envelope:
    transfer_id: str
    sender: str
    recipient: str
    created: str
    reason: str
    bds_version: str
    #: "Patient/<id>" at the sender.
    patient: str


def build(*, envelope: Envelope, resources: list[Stored], base: str, consent: str | None,
          requested_by: str, recipient_endpoint: str) -> dict:
    """The message Bundle for `resources` (the Patient among them)."""
    provenance_id = str(uuid.uuid5(uuid.UUID(envelope.transfer_id), "provenance"))
    header_id = str(uuid.uuid5(uuid.UUID(envelope.transfer_id), "header"))
    targets = [{"reference": f"{s.type}/{s.id}"} for s in resources]
    provenance: dict = {
        "resourceType": "Provenance", "id": provenance_id,
        "target": targets, "recorded": envelope.created,
        "activity": {"coding": [{"system": EVENT_SYSTEM, "code": EVENT_CODE,
                                 "display": "JGZ dossier transfer"}]},
        "reason": [{"coding": [{"system": REASON_SYSTEM, "code": envelope.reason}]}],
        "agent": [{
            "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "custodian",
                                 "display": "Custodian"}]},
            "who": {"identifier": {"system": naming_systems.URA, "value": envelope.sender},
                    "display": requested_by},
        }],
    }
    if consent is not None:
        provenance["entity"] = [{"role": "source", "what": {"reference": consent}}]
    header = {
        "resourceType": "MessageHeader", "id": header_id,
        "extension": [{"url": BDS_VERSION_EXTENSION, "valueString": envelope.bds_version}],
        "eventCoding": {"system": EVENT_SYSTEM, "code": EVENT_CODE},
        "destination": [{"endpoint": recipient_endpoint, "receiver": {
            "identifier": {"system": naming_systems.URA, "value": envelope.recipient}}}],
        "sender": {"identifier": {"system": naming_systems.URA, "value": envelope.sender}},
        "source": {"endpoint": base or "urn:ekd"},
        "reason": {"coding": [{"system": REASON_SYSTEM, "code": envelope.reason}]},
        "focus": [{"reference": envelope.patient},
                  {"reference": f"Provenance/{provenance_id}"}],
    }
    root = base or "urn:ekd"
    entries = [{"fullUrl": f"{root}/MessageHeader/{header_id}", "resource": header}]
    entries += [{"fullUrl": f"{root}/{s.type}/{s.id}", "resource": s.content} for s in resources]
    entries.append({"fullUrl": f"{root}/Provenance/{provenance_id}", "resource": provenance})
    return {
        "resourceType": "Bundle", "type": "message",
        "identifier": {"system": "urn:ietf:rfc:3986",
                       "value": f"urn:uuid:{envelope.transfer_id}"},
        "timestamp": envelope.created,
        "entry": entries,
    }


class PackageInvalid(ValueError):
    """The decrypted and verified package is not a transfer message ekd can import."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(issues[0].diagnostics if issues else "invalid package")
        self.issues = issues


def _identifier_value(node: object) -> str | None:
    if not isinstance(node, dict):
        return None
    identifier = node.get("identifier")
    if not isinstance(identifier, dict) or identifier.get("system") != naming_systems.URA:
        return None
    value = identifier.get("value")
    return value if isinstance(value, str) else None


def envelope_of(bundle: dict) -> Envelope:
    """Read the envelope back; PackageInvalid naming the element when it is not there."""
    def bad(message: str, element: str) -> PackageInvalid:
        return PackageInvalid([Issue("error", "structure", message, (element,))])

    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "message":
        raise bad("The package is not a message Bundle", "Bundle.type")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise bad("The package has no entries", "Bundle.entry")
    header = (entries[0] or {}).get("resource") if isinstance(entries[0], dict) else None
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        raise bad("The first entry is not a MessageHeader", "Bundle.entry[0].resource")
    event = header.get("eventCoding") or {}
    if event.get("system") != EVENT_SYSTEM or event.get("code") != EVENT_CODE:
        raise bad("The message is not a JGZ dossier transfer", "MessageHeader.eventCoding")
    identifier = (bundle.get("identifier") or {}).get("value")
    if not isinstance(identifier, str) or not identifier.startswith("urn:uuid:"):
        raise bad("The package has no transfer id", "Bundle.identifier")
    sender = _identifier_value(header.get("sender"))
    destinations = header.get("destination") or []
    recipient = _identifier_value((destinations[0] or {}).get("receiver")) \
        if destinations and isinstance(destinations[0], dict) else None
    if sender is None:
        raise bad("The envelope names no sender URA", "MessageHeader.sender")
    if recipient is None:
        raise bad("The envelope names no recipient URA", "MessageHeader.destination.receiver")
    timestamp = bundle.get("timestamp")
    if not isinstance(timestamp, str):
        raise bad("The package has no creation time", "Bundle.timestamp")
    reason = next((c.get("code") for c in (header.get("reason") or {}).get("coding") or ()
                   if c.get("system") == REASON_SYSTEM), None)
    version = next((e.get("valueString") for e in header.get("extension") or ()
                    if isinstance(e, dict) and e.get("url") == BDS_VERSION_EXTENSION), None)
    focus = [f.get("reference") for f in header.get("focus") or () if isinstance(f, dict)]
    patient = next((f for f in focus if isinstance(f, str) and f.startswith("Patient/")), None)
    if patient is None:
        raise bad("The envelope names no child", "MessageHeader.focus")
    return Envelope(transfer_id=identifier.removeprefix("urn:uuid:"), sender=sender,
                    recipient=recipient, created=timestamp, reason=str(reason or "other"),
                    bds_version=str(version or ""), patient=patient)


def dossier(bundle: dict) -> list[dict]:
    """The resources to import: every entry but the MessageHeader. The sender's Provenance is
    imported too: it records where the dossier came from. Each must have an id, and only
    one of each: the importer maps references by "Type/id"."""
    out = []
    seen: set[str] = set()
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise PackageInvalid([Issue("error", "structure", "An entry has no resource",
                                        ("Bundle.entry",))])
        if resource.get("resourceType") == "MessageHeader":
            continue
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str) or not rid:
            raise PackageInvalid([Issue("error", "required", "A resource in the package has no "
                                        "id: references to it cannot be followed",
                                        ("Bundle.entry.resource.id",))])
        key = f"{rtype}/{rid}"
        if key in seen:
            raise PackageInvalid([Issue("error", "duplicate", f"{key} is in the package twice",
                                        ("Bundle.entry.resource.id",))])
        seen.add(key)
        out.append(resource)
    return out

