"""May this child's dossier be transferred? The JGZ transfer consent (BDS R010) and the BSN.

Transfer between JGZ organisations needs no permission but can be objected to: G010 "Bezwaar
overdracht dossier binnen JGZ" (BDS element 1395, `provision.type` deny) blocks it, G011
"Toestemming" (1163, permit) or no consent at all lets it go. When several were recorded the
most recent `dateTime` counts (a parent may withdraw an objection). Checked before packaging
and again right before dispatch, because an objection may be recorded while a transfer waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stdnum.nl import bsn as stdnum_bsn

from ekd.jgz import BDS_ELEMENTS
from ekd.search.execute import SearchService
from ekd.store.resources import ResourceStore

PERMIT, OBJECTION = "1163", "1395"


@dataclass(frozen=True, slots=True)
class ConsentState:
    #: The Consent that decides ("Consent/<id>"), or None when none was recorded.
    consent: str | None
    objection: bool


def transfer_consent(search: SearchService, store: ResourceStore, patient_id: str
                     ) -> ConsentState:
    """The child's current transfer consent state (latest active transfer Consent).

    The child's Consents are those whose `patient` is the child (`Consent?patient=`, the
    Consent member of the patient compartment): one index lookup, run three times per
    transfer, rather than the whole compartment filtered to Consents."""
    query = search.parse("Consent", [("patient", f"Patient/{patient_id}")], strict=True)
    pks = search.matching_pks(store, query)
    return decide(s.content for s in store.current_many(pks) if s.content is not None)


def decide(resources: Iterable[dict]) -> ConsentState:
    """The state the latest active transfer Consent among `resources` gives (others ignored):
    used on the stored dossier at the sender and on the received package at the receiver."""
    deciding: tuple[str, dict] | None = None
    for content in resources:
        if content.get("resourceType") != "Consent" or content.get("status") != "active" \
                or _kind(content) is None:
            continue
        when = str(content.get("dateTime") or "")
        if deciding is None or when > deciding[0]:
            deciding = (when, content)
    if deciding is None:
        return ConsentState(None, objection=False)
    content = deciding[1]
    return ConsentState(f"Consent/{content.get('id')}", objection=_kind(content) == OBJECTION)


def _kind(consent: dict) -> str | None:
    """1163 (permit) or 1395 (objection) when this is a JGZ transfer consent, else None."""
    for category in consent.get("category") or ():
        for coding in (category or {}).get("coding") or ():
            if coding.get("system") == BDS_ELEMENTS and coding.get("code") in (PERMIT, OBJECTION):
                provision = (consent.get("provision") or {}).get("type")
                # The provision decides; the category only says what kind of consent it is.
                return OBJECTION if provision == "deny" else PERMIT
    return None


def valid_bsn(value: str | None) -> bool:
    """The BSN 11-test (python-stdnum), on exactly nine digits."""
    return value is not None and len(value) == 9 and stdnum_bsn.is_valid(value)
