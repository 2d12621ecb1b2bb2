"""Formats, content negotiation, subsetting and error responses."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ekd.fhir.xml import loads_xml
from tests.fhir_helpers import JSON, id_from_location, patient

XML = "application/fhir+xml"


def _create(client: TestClient, **extra: object) -> str:
    r = client.post("/fhir/Patient", json=patient(**extra))
    assert r.status_code == 201, r.text
    return id_from_location(r.headers["location"])


def test_xml_out_by_accept_and_format(client: TestClient) -> None:
    pid = _create(client)
    r = client.get(f"/fhir/Patient/{pid}", headers={"Accept": XML})
    assert r.headers["content-type"].startswith(XML)
    assert r.text.startswith("<?xml")
    assert loads_xml(r.content)["name"] == [{"family": "Jansen"}]
    r = client.get(f"/fhir/Patient/{pid}?_format=xml")
    assert r.headers["content-type"].startswith(XML)
    r = client.get(f"/fhir/Patient/{pid}?_format=json", headers={"Accept": XML})
    assert r.headers["content-type"].startswith(JSON)
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    r = client.get(f"/fhir/Patient/{pid}", headers={"Accept": browser})
    assert r.headers["content-type"].startswith(XML)  # application/xml ranks above */*


def test_xml_in(client: TestClient) -> None:
    body = (b'<Patient xmlns="http://hl7.org/fhir"><name><family value="Bakker"/></name>'
            b'<birthDate value="2021-05-06"/></Patient>')
    r = client.post("/fhir/Patient", content=body,
                    headers={"Content-Type": XML, "Accept": XML})
    assert r.status_code == 201, r.text
    assert loads_xml(r.content)["name"][0]["family"] == "Bakker"
    bad = client.post("/fhir/Patient", content=b"<Patient xmlns='http://hl7.org/fhir'><name>",
                      headers={"Content-Type": XML})
    assert bad.status_code == 400 and "line" in bad.json()["issue"][0]["diagnostics"]
    xxe = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>')
    assert client.post("/fhir/Patient", content=xxe,
                       headers={"Content-Type": XML}).status_code == 400


def test_errors_come_in_the_requested_format(client: TestClient) -> None:
    r = client.get("/fhir/Patient/nope", headers={"Accept": XML})
    assert r.status_code == 404 and r.headers["content-type"].startswith(XML)
    assert loads_xml(r.content)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("headers", "status"), [
    ({"Accept": "text/html"}, 406),
    ({"Accept": "application/pdf, image/png"}, 406),
])
def test_not_acceptable(client: TestClient, headers: dict, status: int) -> None:
    r = client.get("/fhir/metadata", headers=headers)
    assert r.status_code == status
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unsupported_format_and_media_type(client: TestClient) -> None:
    assert client.get("/fhir/metadata?_format=turtle").status_code == 406
    r = client.post("/fhir/Patient", content=b"name=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415


def test_pretty(client: TestClient) -> None:
    pid = _create(client)
    assert b"\n" not in client.get(f"/fhir/Patient/{pid}").content
    assert b'\n  "resourceType"' in client.get(f"/fhir/Patient/{pid}?_pretty=true").content


def test_summary_and_elements_on_read(client: TestClient) -> None:
    pid = _create(client, text={"status": "generated",
                                "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
                  maritalStatus={"text": "ongehuwd"})
    full = client.get(f"/fhir/Patient/{pid}").json()
    assert "maritalStatus" in full and "text" in full
    s = client.get(f"/fhir/Patient/{pid}?_summary=true").json()
    assert "maritalStatus" not in s and "text" not in s and s["name"] and s["birthDate"]
    assert any(t["code"] == "SUBSETTED" for t in s["meta"]["tag"])
    data = client.get(f"/fhir/Patient/{pid}?_summary=data").json()
    assert "text" not in data and "maritalStatus" in data
    text = client.get(f"/fhir/Patient/{pid}?_summary=text").json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    el = client.get(f"/fhir/Patient/{pid}?_elements=birthDate").json()
    assert set(el) == {"resourceType", "id", "meta", "birthDate"}
    assert client.get(f"/fhir/Patient/{pid}?_summary=maybe").status_code == 400


def test_malformed_json_names_position(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",\n "name": [}',
                    headers={"Content-Type": JSON})
    assert r.status_code == 400
    assert "line 2" in r.json()["issue"][0]["diagnostics"]


def test_json_depth_limit(client: TestClient) -> None:
    deep: dict = {"url": "http://example.org/x"}
    for _ in range(100):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    r = client.post("/fhir/Patient", json=patient(extension=[deep]))
    assert r.status_code == 400 and "depth" in r.json()["issue"][0]["diagnostics"]


def test_body_size_limit(client: TestClient, services) -> None:
    limit = services.settings.max_body_bytes
    big = patient(name=[{"family": "x" * (limit + 10)}])
    r = client.post("/fhir/Patient", json=big)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"


def test_unknown_type_path_and_method(client: TestClient) -> None:
    assert client.get("/fhir/Unicorn/1").status_code == 404
    assert client.post("/fhir/Unicorn", json={"resourceType": "Unicorn"}).status_code == 404
    assert client.get("/fhir/Patient/1/_history/1/extra").status_code == 404
    r = client.post("/fhir/Patient/123", json=patient())
    assert r.status_code == 405 and r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/$everything").status_code == 404


def test_capability_statement(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert set(cs["format"]) >= {"application/fhir+json", "application/fhir+xml"}
    rest = cs["rest"][0]
    patient_cap = next(r for r in rest["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient_cap["interaction"]}
    assert codes == {"read", "vread", "update", "patch", "delete", "history-instance",
                     "history-type", "create", "search-type"}
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    names = {p["name"] for p in patient_cap["searchParam"]}
    assert {"_id", "_lastUpdated", "identifier", "birthdate", "name", "general-practitioner",
            "_tag", "_profile"} <= names
    assert "near" not in names  # R4 'special' parameters are not offered
    birthdate = next(p for p in patient_cap["searchParam"] if p["name"] == "birthdate")
    assert birthdate["type"] == "date"
    assert birthdate["definition"] == "http://hl7.org/fhir/SearchParameter/individual-birthdate"
    assert client.get("/fhir/metadata", headers={"Accept": XML}).status_code == 200


def test_search_unknown_parameter_warns_or_fails_strict(client: TestClient) -> None:
    _create(client)
    r = client.get("/fhir/Patient?colour=blue").json()
    outcome = [e for e in r["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get("/fhir/Patient?colour=blue", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    assert client.get("/health/ready").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_summary_applies_inside_backbone_elements(client: TestClient) -> None:
    obs = {
        "resourceType": "Observation", "status": "final", "code": {"text": "bloeddruk"},
        "component": [{"code": {"text": "systolisch"}, "valueQuantity": {"value": 110},
                       "interpretation": [{"text": "normaal"}]}],
    }
    r = client.post("/fhir/Observation", json=obs)
    oid = id_from_location(r.headers["location"])
    s = client.get(f"/fhir/Observation/{oid}?_summary=true").json()
    assert s["component"] == [{"code": {"text": "systolisch"}, "valueQuantity": {"value": 110}}]


def _nesting(value: object) -> int:
    """Containers on the deepest path (0 for a scalar): the oracle for `check_depth`."""
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize("document", [
    5, "x", None, {}, [], {"a": 1}, [[[]]], {"a": [{"b": [1, {"c": {}}]}], "d": 2},
    [1, [2, [3, [4]]], {"x": {"y": {"z": []}}}],
    {"resourceType": "Bundle", "entry": [{"resource": {"meta": {"tag": [{"code": "a"}]}}}] * 3},
])
def test_check_depth_accepts_exactly_its_limit(document: object) -> None:
    from ekd.errors import FhirError
    from ekd.fhir.jsonfmt import check_depth

    depth = max(_nesting(document), 1)
    check_depth(document, depth)
    if _nesting(document) >= 1:
        with pytest.raises(FhirError, match="maximum depth"):
            check_depth(document, depth - 1)
