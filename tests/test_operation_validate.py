"""$validate (http://hl7.org/fhir/R4/resource-operation-validate.html)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.fhir_helpers import patient


def _severities(outcome: dict) -> list[str]:
    """Severities, without the warnings every narrative-less resource gets (dom-6)."""
    assert outcome["resourceType"] == "OperationOutcome"
    return [i["severity"] for i in outcome["issue"] if "dom-6" not in i.get("diagnostics", "")]


def test_validate_a_resource_on_the_type(client: TestClient) -> None:
    ok = client.post("/fhir/Patient/$validate", json=patient())
    assert ok.status_code == 200 and _severities(ok.json()) == ["information"]
    bad = client.post("/fhir/Patient/$validate", json=patient(birthDate="2022-13-45"))
    assert bad.status_code == 200
    issue = bad.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.birthDate"]
    assert client.get("/fhir/_history").json().get("entry") is None  # nothing stored


def test_validate_with_parameters_and_modes(client: TestClient) -> None:
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient(colour="blauw")},
        {"name": "mode", "valueCode": "create"}]}
    r = client.post("/fhir/Patient/$validate", json=params)
    assert "error" in _severities(r.json())
    wrong_mode = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient()}, {"name": "mode", "valueCode": "erase"}]}
    assert client.post("/fhir/Patient/$validate", json=wrong_mode).status_code == 400
    assert client.post("/fhir/Patient/$validate", json=patient(resourceType="Observation")
                       ).status_code == 400


def test_validate_a_stored_resource(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"))
    r = client.get("/fhir/Patient/p1/$validate")
    assert r.status_code == 200 and _severities(r.json()) == ["information"]
    update = client.post("/fhir/Patient/p1/$validate",
                         json={"resourceType": "Parameters", "parameter": [
                             {"name": "resource", "resource": patient(id="other")},
                             {"name": "mode", "valueCode": "update"}]})
    assert update.status_code == 400
    assert client.get("/fhir/Patient/nope/$validate").status_code == 404


def test_unknown_operation_and_capability(client: TestClient) -> None:
    assert client.post("/fhir/Patient/$teleport", json={}).status_code == 404
    cs = client.get("/fhir/metadata").json()
    pat = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"name": "validate",
            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            } in pat["operation"]
