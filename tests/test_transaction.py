"""batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.fhir_helpers import BSN_SYSTEM, observation, patient


def entry(method: str, url: str, resource: dict | None = None, full_url: str | None = None,
          **request: str) -> dict:
    e: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        e["resource"] = resource
    if full_url:
        e["fullUrl"] = full_url
    return e


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_resolves_urn_uuid_references(client: TestClient) -> None:
    p_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    b = bundle(
        "transaction",
        entry("POST", "Observation", observation(p_url),
              "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"),
        entry("POST", "Patient", patient(), p_url),
    )
    r = client.post("/fhir", json=b)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    obs_resp, pat_resp = out["entry"]  # same order as the request
    assert obs_resp["response"]["status"] == "201 Created"
    assert pat_resp["response"]["location"].startswith("Patient/")
    pid = pat_resp["response"]["location"].split("/")[1]
    assert obs_resp["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200


def test_transaction_is_all_or_nothing(client: TestClient) -> None:
    b = bundle(
        "transaction",
        entry("POST", "Patient", patient(family="Eerst")),
        entry("PUT", "Patient/fixed-id", patient(id="fixed-id")),
        entry("POST", "Observation", {"resourceType": "Observation", "status": "final"}),
    )
    r = client.post("/fhir", json=b)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["diagnostics"].startswith("Bundle.entry[2]")
    assert issue["expression"] == ["Bundle.entry[2].resource.Observation.code"]
    assert client.get("/fhir/Patient/fixed-id").status_code == 404
    assert client.get("/fhir/_history").json().get("entry") is None


def test_transaction_processing_order_and_conditional_references(client: TestClient) -> None:
    client.put("/fhir/Patient/old", json=patient(id="old", bsn="999999990"))
    client.put("/fhir/Patient/keep", json=patient(id="keep", bsn=None))
    b = bundle(
        "transaction",
        entry("GET", "Patient/keep"),
        entry("POST", "Observation",
              observation(f"Patient?identifier={BSN_SYSTEM}|123123123")),
        entry("DELETE", "Patient/old"),
        entry("PUT", f"Patient?identifier={BSN_SYSTEM}|123123123",
              patient(bsn="123123123"), "urn:uuid:0ac4cfc6-8f2b-4c6b-a6a2-1d9d0c3f0e11"),
    )
    # The conditional reference points at a patient the same transaction creates by a
    # conditional update: references resolve before any entry runs, so it must fail.
    r = client.post("/fhir", json=b)
    assert r.status_code == 412
    client.put("/fhir/Patient/new", json=patient(id="new", bsn="123123123"))
    r = client.post("/fhir", json=b)
    assert r.status_code == 200, r.text
    get_resp, obs_resp, del_resp, put_resp = r.json()["entry"]
    assert del_resp["response"]["status"] == "204 No Content"
    assert get_resp["response"]["status"] == "200 OK"
    assert get_resp["resource"]["id"] == "keep"
    assert obs_resp["resource"]["subject"]["reference"] == "Patient/new"
    assert put_resp["response"]["status"] == "200 OK"
    assert client.get("/fhir/Patient/old").status_code == 410


def test_transaction_reads_run_after_writes(client: TestClient) -> None:
    client.put("/fhir/Patient/gone", json=patient(id="gone"))
    b = bundle("transaction", entry("GET", "Patient/gone"), entry("DELETE", "Patient/gone"))
    r = client.post("/fhir", json=b)
    # The GET is processed last, sees the deletion and so fails the whole transaction.
    assert r.status_code == 410
    assert client.get("/fhir/Patient/gone").status_code == 200


def test_transaction_rejects_double_target(client: TestClient) -> None:
    b = bundle("transaction",
               entry("PUT", "Patient/twice", patient(id="twice")),
               entry("DELETE", "Patient/twice"))
    r = client.post("/fhir", json=b)
    assert r.status_code == 400
    assert "only once" in r.json()["issue"][0]["diagnostics"]


def test_transaction_conditional_create_reuses_match(client: TestClient) -> None:
    client.put("/fhir/Patient/known", json=patient(id="known", bsn="999999990"))
    p_url = "urn:uuid:5d7f2c65-2f1a-4a3c-9b8f-6c0f5d3c2b10"
    b = bundle("transaction",
               entry("POST", "Patient", patient(bsn="999999990"), p_url,
                     ifNoneExist=f"identifier={BSN_SYSTEM}|999999990"),
               entry("POST", "Observation", observation(p_url)))
    r = client.post("/fhir", json=b).json()
    assert r["entry"][0]["response"]["status"] == "200 OK"
    assert r["entry"][1]["resource"]["subject"]["reference"] == "Patient/known"


def test_transaction_prefer_minimal(client: TestClient) -> None:
    b = bundle("transaction", entry("POST", "Patient", patient()))
    r = client.post("/fhir", json=b, headers={"Prefer": "return=minimal"}).json()
    assert "resource" not in r["entry"][0]
    assert r["entry"][0]["response"]["etag"] == 'W/"1"'


def test_batch_entries_are_independent(client: TestClient) -> None:
    b = bundle(
        "batch",
        entry("POST", "Patient", patient()),
        entry("POST", "Observation", {"resourceType": "Observation", "status": "final"}),
        entry("GET", "Patient/missing"),
        entry("PUT", "Patient/b1", patient(id="b1")),
    )
    r = client.post("/fhir", json=b)
    assert r.status_code == 200
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "422", "404", "201 Created"]
    assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/b1").status_code == 200


def test_bundle_shape_errors(client: TestClient) -> None:
    assert client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}
                       ).status_code == 400
    assert client.post("/fhir", json=patient()).status_code == 400
    bad = bundle("transaction", {"resource": patient()})
    r = client.post("/fhir", json=bad)
    assert r.status_code == 400 and "Bundle.entry[0]" in r.json()["issue"][0]["diagnostics"]
    too_many = bundle("batch", *[entry("GET", "Patient/x")] * 10_001)
    assert client.post("/fhir", json=too_many).status_code == 413


def test_patch_in_transaction_via_binary(client: TestClient) -> None:
    import base64
    import json

    client.put("/fhir/Patient/p1", json=patient(id="p1"))
    doc = [{"op": "add", "path": "/gender", "value": "male"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(doc).encode()).decode()}
    r = client.post("/fhir", json=bundle("transaction", entry("PATCH", "Patient/p1", binary)))
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Patient/p1").json()["gender"] == "male"
