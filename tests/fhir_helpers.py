"""Small builders shared by the tests."""

from __future__ import annotations

JSON = "application/fhir+json"
BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"


def patient(family: str = "Jansen", bsn: str | None = "123456782", **extra: object) -> dict:
    resource: dict = {"resourceType": "Patient", "name": [{"family": family}],
                      "birthDate": "2022-03-04"}
    if bsn is not None:
        resource["identifier"] = [{"system": BSN_SYSTEM, "value": bsn}]
    resource.update(extra)
    return resource


def observation(subject: str, value: float = 75.5) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2023-01-01T10:00:00+01:00",
        "valueQuantity": {"value": value, "unit": "cm", "system": "http://unitsofmeasure.org",
                          "code": "cm"},
    }


def id_from_location(location: str) -> str:
    """`.../Patient/<id>/_history/1` -> `<id>`"""
    parts = location.split("/")
    return parts[parts.index("_history") - 1]
