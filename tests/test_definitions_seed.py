"""The project's profiles and terminology are served as FHIR resources with their ids."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ekd.api.app import PROJECT_DEFINITIONS
from ekd.definitions.seed import seed
from ekd.interaction.base import Services


def test_seeded_profiles_are_readable_and_seeding_is_idempotent(
    client: TestClient, services: Services
) -> None:
    first = seed(services, PROJECT_DEFINITIONS)
    assert first.failed == [] and first.created > 20
    r = client.get("/fhir/StructureDefinition/jgz-Patient")
    assert r.status_code == 200
    assert r.json()["url"] == "https://fhir.ekd.nl/StructureDefinition/jgz-Patient"
    assert client.get("/fhir/ValueSet/bds-40.308").status_code == 200
    again = seed(services, PROJECT_DEFINITIONS)
    assert again.created == 0 and again.existing == first.created
    history = client.get("/fhir/StructureDefinition/jgz-Patient/_history").json()
    assert history["total"] == 1  # unchanged files make no new versions
