"""The JGZ profiles enforced on write by default: chosen by type and, for Observations, by
code, whether or not the resource claims a profile (issue #4, "Enforced on write")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from ekd.interaction.base import Services
from ekd.jgz.enforcement import JgzProfiles
from tests import test_jgz_profiles as examples
from tests.app_helpers import fhir_client


@pytest.fixture
def jgz_client(services: Services) -> Iterator[TestClient]:
    """A server in the default configuration: the JGZ rules on."""
    selector = JgzProfiles(services.definitions, services.terminology).select
    jgz = replace(services, settings=replace(services.settings, jgz_enforce=True),
                  profile_selector=selector)
    with fhir_client(jgz) as c:
        yield c


def unclaimed(resource: dict) -> dict:
    """The same resource without meta.profile: enforcement must not depend on the claim."""
    return {k: v for k, v in resource.items() if k != "meta"}


def test_conforming_resources_need_not_claim_the_profile(jgz_client: TestClient) -> None:
    r = jgz_client.put("/fhir/Patient/jgz-child",
                       json={**unclaimed(examples.patient("999900183")), "id": "jgz-child"})
    assert r.status_code == 201, r.text
    for resource in (examples.body_height(), examples.van_wiechen(), examples.encounter(),
                     examples.immunization()):
        r = jgz_client.post(f"/fhir/{resource['resourceType']}", json=unclaimed(resource))
        assert r.status_code == 201, (resource["resourceType"], r.text)


def test_unclaimed_patient_is_still_held_to_jgz_patient(jgz_client: TestClient) -> None:
    no_bsn = unclaimed(examples.patient())
    del no_bsn["identifier"]
    r = jgz_client.post("/fhir/Patient", json=no_bsn)
    assert r.status_code == 422
    assert "BDS 7" in r.text
    bad_bsn = unclaimed(examples.patient(examples.FAILING_BSN))
    r = jgz_client.post("/fhir/Patient", json=bad_bsn)
    assert r.status_code == 422 and "11-test" in r.text
    assert examples.FAILING_BSN not in r.text


def test_observation_outside_the_jgz_kinds_is_refused(jgz_client: TestClient) -> None:
    jgz_client.put("/fhir/Patient/jgz-child",
                   json={**examples.patient("999900183"), "id": "jgz-child"})
    cholesterol = {**unclaimed(examples.body_height()),
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2093-3"}]}}
    r = jgz_client.post("/fhir/Observation", json=cholesterol)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Observation.code"] and "fits none" in issue["diagnostics"]
    impossible = unclaimed(examples.body_height(value=420, unit="cm"))
    assert jgz_client.post("/fhir/Observation", json=impossible).status_code == 422


@pytest.mark.parametrize("code", [
    [{"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}],
    {"coding": "8302-2"}, {"coding": [["x"]]}, "8302-2",
])
def test_a_malformed_observation_code_is_an_error_naming_it(jgz_client: TestClient,
                                                           code: object) -> None:
    r = jgz_client.post("/fhir/Observation", json={**unclaimed(examples.body_height()),
                                                    "code": code})
    assert r.status_code in (400, 422), r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert any("Observation.code" in e for i in body["issue"] for e in i.get("expression", [])
               ), body


def test_a_malformed_meta_in_a_bundle_entry_is_an_error_naming_it(jgz_client: TestClient
                                                                  ) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{
        "fullUrl": "urn:uuid:0b8f4e52-6a5e-4d84-9a8f-3d7c2b1a0e01",
        "resource": {**unclaimed(examples.body_height()), "meta": [{"versionId": "1"}]}}]}
    r = jgz_client.post("/fhir/Bundle", json=bundle)  # stored as a Bundle: validated whole
    assert r.status_code in (400, 422), r.text
    assert "meta" in r.text and r.json()["resourceType"] == "OperationOutcome"


def test_uncontrolled_types_are_free_and_the_rules_can_be_relaxed(
    jgz_client: TestClient, client: TestClient
) -> None:
    org = {"resourceType": "Organization", "name": "Zonder URA"}
    assert jgz_client.post("/fhir/Organization", json=org).status_code == 201
    plain = {"resourceType": "Patient", "gender": "female"}
    assert jgz_client.post("/fhir/Patient", json=plain).status_code == 422
    assert client.post("/fhir/Patient", json=plain).status_code == 201  # EKD_JGZ_ENFORCE=false
