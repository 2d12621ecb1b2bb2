"""Growth measurements implausible for the child's age and sex: stored, with a warning."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ekd.interaction.base import Services
from ekd.jgz.enforcement import JgzProfiles
from ekd.jgz.growth import GrowthReferences
from ekd.jgz.plausibility import GrowthPlausibility
from tests import test_jgz_profiles as examples
from tests.app_helpers import fhir_client

REFERENCES = Path(__file__).resolve().parents[2] / "shared/growth/references/nl1997"
OO = {"Prefer": "return=OperationOutcome"}


@pytest.fixture
def references() -> GrowthReferences:
    if not REFERENCES.is_dir():
        pytest.skip(f"the Dutch growth references are absent: {REFERENCES}")
    return GrowthReferences.load(REFERENCES)


def test_sds_matches_the_published_reference_values(references: GrowthReferences) -> None:
    # ../shared/growth/README.md: boy, 0.3 y, head circumference 40 cm -> -1.268; 5 kg -> -2.131
    assert references.sds("hdc", "male", 0.3, 40) == pytest.approx(-1.268, abs=0.001)
    assert references.sds("wgt", "male", 0.3, 5) == pytest.approx(-2.131, abs=0.001)
    assert references.sds("hgt", "male", 25.0, 180) is None  # outside the table: no guess


@pytest.fixture
def jgz_client(services: Services, references: GrowthReferences) -> Iterator[TestClient]:
    jgz = replace(services, settings=replace(services.settings, jgz_enforce=True),
                  profile_selector=JgzProfiles(services.definitions, services.terminology).select,
                  checks=(GrowthPlausibility(references).check,))
    with fhir_client(jgz) as c:
        yield c


def _warnings(response) -> list[str]:
    return [i["diagnostics"] for i in response.json()["issue"] if i["severity"] == "warning"
            and "SDS" in i["diagnostics"]]


def test_implausible_length_is_stored_with_a_warning(jgz_client: TestClient) -> None:
    # the example child is a girl born 2024-03-04; the measurement is of 2024-05-01 (8 weeks)
    r = jgz_client.put("/fhir/Patient/jgz-child",
                       json={**examples.patient("999900183"), "id": "jgz-child"})
    assert r.status_code == 201, r.text
    normal = jgz_client.post("/fhir/Observation", json=examples.body_height(56.5), headers=OO)
    assert normal.status_code == 201 and _warnings(normal) == []
    tall = jgz_client.post("/fhir/Observation", json=examples.body_height(85.0), headers=OO)
    assert tall.status_code == 201, tall.text  # a warning, not a rejection
    [warning] = _warnings(tall)
    assert warning.startswith("BDS 235 (Lengte): ") and "+" in warning
    light = jgz_client.post("/fhir/Observation", json=examples.body_weight(1200), headers=OO)
    assert light.status_code == 201 and _warnings(light)[0].startswith("BDS 245 (Gewicht)")
    # the same length in mm is judged the same way
    mm = jgz_client.post("/fhir/Observation", json=examples.body_height(850, "mm"), headers=OO)
    assert mm.status_code == 201 and len(_warnings(mm)) == 1
