"""Warnings for growth measurements implausible for the child's age and sex (issue #4: "values
outside a plausible range for the child's age are warnings, not rejections").

Physically impossible values are errors in the profiles themselves; this check needs the child,
so it runs on the write path with the store: the subject Patient's birth date and sex, the
measurement's date, and an SDS against the configured growth references. Beyond +-4 SDS (about 3
in 100,000 children) the write is kept but answered with a warning.
"""

from __future__ import annotations

from datetime import date

from ekd.errors import Issue
from ekd.jgz import BDS_ELEMENTS
from ekd.jgz.growth import GrowthReferences
from ekd.store.resources import ResourceStore

#: (system, code) -> (reference measure, BDS label)
MEASUREMENTS = {
    ("http://loinc.org", "8302-2"): ("hgt", "BDS 235 (Lengte)"),
    (BDS_ELEMENTS, "235"): ("hgt", "BDS 235 (Lengte)"),
    ("http://loinc.org", "29463-7"): ("wgt", "BDS 245 (Gewicht)"),
    (BDS_ELEMENTS, "245"): ("wgt", "BDS 245 (Gewicht)"),
    ("http://loinc.org", "9843-4"): ("hdc", "BDS 252 (Hoofdomtrek)"),
    (BDS_ELEMENTS, "252"): ("hdc", "BDS 252 (Hoofdomtrek)"),
}
#: UCUM unit -> factor to the reference's unit (cm for lengths, kg for weights)
TO_REFERENCE = {"hgt": {"cm": 1.0, "mm": 0.1}, "hdc": {"cm": 1.0, "mm": 0.1},
                "wgt": {"kg": 1.0, "g": 0.001}}
LIMIT = 4.0


class GrowthPlausibility:
    def __init__(self, references: GrowthReferences, limit: float = LIMIT) -> None:
        self.references = references
        self.limit = limit

    def check(self, store: ResourceStore, resource: dict) -> list[Issue]:
        if resource.get("resourceType") != "Observation":
            return []
        kind = next((MEASUREMENTS[(c.get("system"), c.get("code"))]
                     for c in (resource.get("code") or {}).get("coding") or []
                     if isinstance(c, dict) and (c.get("system"), c.get("code")) in MEASUREMENTS),
                    None)
        quantity = resource.get("valueQuantity") or {}
        if kind is None or not isinstance(quantity.get("value"), int | float):
            return []
        measure, label = kind
        factor = TO_REFERENCE[measure].get(str(quantity.get("code")))
        child = self._child(store, resource)
        measured = _day(resource.get("effectiveDateTime"))
        if factor is None or child is None or measured is None:
            return []
        born, sex = child
        age = (measured - born).days / 365.25
        sds = self.references.sds(measure, sex, age, quantity["value"] * factor)
        if sds is None or abs(sds) <= self.limit:
            return []
        message = (f"{label}: Observation.valueQuantity is implausible for the child's age and "
                   f"sex ({sds:+.1f} SDS against the Dutch growth reference); stored, please check")
        return [Issue("warning", "business-rule", message, ("Observation.valueQuantity",))]

    @staticmethod
    def _child(store: ResourceStore, resource: dict) -> tuple[date, str] | None:
        reference = str((resource.get("subject") or {}).get("reference", ""))
        rtype, _, rid = reference.partition("/")
        if rtype != "Patient" or not rid:
            return None
        patient = store.current("Patient", rid)
        content = patient.content if patient is not None and not patient.deleted else None
        if not content or content.get("gender") not in ("male", "female"):
            return None
        born = _day(content.get("birthDate"))
        return (born, content["gender"]) if born is not None else None


def _day(value: object) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None
