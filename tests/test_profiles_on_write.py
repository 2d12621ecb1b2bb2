"""Profiles on the write path: claimed in meta.profile, required by configuration, and
POSTed at run time (used from the next request on, no restart)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from ekd.interaction.base import Services
from tests.app_helpers import fhir_client
from tests.fhir_helpers import patient

PROFILE = "http://example.org/fhir/StructureDefinition/kind-met-geboortedatum"


def profile() -> dict:
    """Differential only: the server generates the snapshot."""
    return {
        "resourceType": "StructureDefinition", "id": "kind-met-geboortedatum", "url": PROFILE,
        "name": "KindMetGeboortedatum", "status": "active", "kind": "resource",
        "abstract": False, "type": "Patient", "derivation": "constraint",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "mapping": [{"identity": "bds", "name": "BDS",
                     "uri": "urn:oid:2.16.840.1.113883.2.4.4.40.267"}],
        "differential": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1,
             "mapping": [{"identity": "bds", "map": "20", "comment": "Geboortedatum"}]},
        ]},
    }


def test_posted_profile_is_enforced_without_restart(client: TestClient) -> None:
    claimed = patient(meta={"profile": [PROFILE]})
    del claimed["birthDate"]
    # Unknown profile: a warning only (as the reference validator does).
    assert client.post("/fhir/Patient", json=claimed).status_code == 201
    assert client.put("/fhir/StructureDefinition/kind-met-geboortedatum",
                      json=profile()).status_code == 201
    r = client.post("/fhir/Patient", json=claimed)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient.birthDate"]
    assert PROFILE in issue["diagnostics"]
    assert issue["diagnostics"].startswith("BDS 20 (Geboortedatum): Patient.birthDate")
    ok = patient(meta={"profile": [PROFILE]})
    assert client.post("/fhir/Patient", json=ok).status_code == 201


@pytest.fixture
def strict_client(services: Services) -> Iterator[TestClient]:
    settings = replace(services.settings, required_profiles={"Patient": (PROFILE,)})
    with fhir_client(replace(services, settings=settings)) as c:
        yield c


def test_required_profiles_apply_to_resources_that_claim_none(strict_client: TestClient) -> None:
    strict_client.put("/fhir/StructureDefinition/kind-met-geboortedatum", json=profile())
    no_birth_date = patient()
    del no_birth_date["birthDate"]
    r = strict_client.post("/fhir/Patient", json=no_birth_date)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Patient.birthDate"]
    assert strict_client.post("/fhir/Patient", json=patient()).status_code == 201
    # $validate applies the same requirement
    outcome = strict_client.post("/fhir/Patient/$validate", json=no_birth_date).json()
    assert any(i["severity"] == "error" for i in outcome["issue"])
