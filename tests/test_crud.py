"""read, vread, create, update, delete, patch, history and their headers, on both backends."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.fhir_helpers import BSN_SYSTEM, JSON, id_from_location, observation, patient


def create(client: TestClient, resource: dict, **headers: str) -> tuple[str, dict]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource,
                    headers={"Content-Type": JSON, **headers})
    assert r.status_code == 201, r.text
    return id_from_location(r.headers["location"]), r.json()


def test_create_assigns_id_version_and_headers(client: TestClient) -> None:
    body = patient(id="client-chosen")
    r = client.post("/fhir/Patient", json=body, headers={"Content-Type": JSON})
    assert r.status_code == 201
    created = r.json()
    assert created["id"] != "client-chosen"  # the server assigns ids on create
    assert created["meta"]["versionId"] == "1"
    assert created["meta"]["lastUpdated"].endswith("Z")
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://testserver/fhir/Patient/{created['id']}/_history/1"
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert created["name"] == [{"family": "Jansen"}]


def test_read_and_vread(client: TestClient) -> None:
    pid, _ = create(client, patient())
    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json()["id"] == pid
    assert r.headers["etag"] == 'W/"1"'
    upd = {**r.json(), "gender": "female"}
    assert client.put(f"/fhir/Patient/{pid}", json=upd).status_code == 200
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2")
    assert v1.status_code == 200 and "gender" not in v1.json()
    assert v2.json()["gender"] == "female" and v2.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404
    assert client.get("/fhir/Patient/does-not-exist").status_code == 404


def test_conditional_read_not_modified(client: TestClient) -> None:
    pid, _ = create(client, patient())
    r = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"7"'}).status_code == 200


def test_update_requires_matching_id(client: TestClient) -> None:
    pid, created = create(client, patient())
    r = client.put(f"/fhir/Patient/{pid}", json={**created, "id": "other"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["id"]
    no_id = {k: v for k, v in created.items() if k != "id"}
    assert client.put(f"/fhir/Patient/{pid}", json=no_id).status_code == 400


def test_update_as_create_and_noop_update(client: TestClient) -> None:
    body = patient(id="kind-1")
    r = client.put("/fhir/Patient/kind-1", json=body)
    assert r.status_code == 201
    assert r.headers["location"].endswith("/Patient/kind-1/_history/1")
    same = client.put("/fhir/Patient/kind-1", json=body)
    assert same.status_code == 200 and same.json()["meta"]["versionId"] == "1"
    changed = client.put("/fhir/Patient/kind-1", json={**body, "gender": "male"})
    assert changed.json()["meta"]["versionId"] == "2"


def test_if_match(client: TestClient) -> None:
    pid, created = create(client, patient())
    stale = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "male"},
                       headers={"If-Match": 'W/"2"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    ok = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "male"},
                    headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'
    again = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "other"},
                       headers={"If-Match": 'W/"1"'})
    assert again.status_code == 412
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"


def test_delete_is_versioned_and_read_is_gone(client: TestClient) -> None:
    pid, created = create(client, patient())
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    assert r.headers["etag"] == 'W/"2"'
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # idempotent
    assert client.delete("/fhir/Patient/never-was").status_code == 204
    # searching never finds a deleted resource
    assert client.get(f"/fhir/Patient?_id={pid}").json()["total"] == 0
    # update brings it back as version 3
    back = client.put(f"/fhir/Patient/{pid}", json=created)
    assert back.status_code == 201 and back.json()["meta"]["versionId"] == "3"


def test_history_instance_type_system(client: TestClient) -> None:
    pid, created = create(client, patient())
    client.put(f"/fhir/Patient/{pid}", json={**created, "gender": "female"})
    client.delete(f"/fhir/Patient/{pid}")
    oid, _ = create(client, observation(f"Patient/{pid}"))
    h = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert h["type"] == "history" and h["total"] == 3
    methods = [e["request"]["method"] for e in h["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]  # newest first
    assert "resource" not in h["entry"][0]
    assert h["entry"][1]["response"]["etag"] == 'W/"2"'
    t = client.get("/fhir/Patient/_history").json()
    assert {e["fullUrl"].rsplit("/", 1)[1] for e in t["entry"]} == {pid}
    s = client.get("/fhir/_history").json()
    assert len(s["entry"]) == 4
    assert s["entry"][0]["resource"]["id"] == oid
    assert client.get("/fhir/Patient/nope/_history").status_code == 404


def test_history_paging_and_since(client: TestClient) -> None:
    pid, created = create(client, patient())
    for g in ("male", "female", "other", "unknown", "male"):
        created = client.put(f"/fhir/Patient/{pid}", json={**created, "gender": g}).json()
    page = client.get(f"/fhir/Patient/{pid}/_history?_count=2").json()
    versions = []
    while True:
        versions += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        # writes between pages do not shift the pages
        client.put(f"/fhir/Patient/{pid}", json={**created, "active": len(versions) % 4 == 0})
        page = client.get(nxt[0].replace("http://testserver", "")).json()
    assert versions == ["6", "5", "4", "3", "2", "1"]
    v3 = client.get(f"/fhir/Patient/{pid}/_history/3").json()["meta"]["lastUpdated"]
    since = client.get(f"/fhir/Patient/{pid}/_history", params={"_since": v3}).json()
    assert all(int(e["resource"]["meta"]["versionId"]) > 3 for e in since["entry"])
    assert client.get(f"/fhir/Patient/{pid}/_history?_since=yesterday").status_code == 400


def test_prefer_return(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and "location" in r.headers
    r = client.post("/fhir/Patient", json=patient(),
                    headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201 and r.json()["resourceType"] == "OperationOutcome"
    pid = id_from_location(r.headers["location"])
    r = client.delete(f"/fhir/Patient/{pid}", headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    r = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=representation"})
    assert r.json()["resourceType"] == "Patient"


def test_conditional_create(client: TestClient) -> None:
    criteria = f"identifier={BSN_SYSTEM}|999999990"
    first = client.post("/fhir/Patient", json=patient(bsn="999999990"),
                        headers={"If-None-Exist": criteria})
    assert first.status_code == 201
    second = client.post("/fhir/Patient", json=patient(bsn="999999990"),
                         headers={"If-None-Exist": criteria})
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    client.put("/fhir/Patient/dup", json=patient(bsn="999999990", id="dup"))
    third = client.post("/fhir/Patient", json=patient(bsn="999999990"),
                        headers={"If-None-Exist": criteria})
    assert third.status_code == 412
    unknown = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "foo=bar"})
    assert unknown.status_code == 400


def test_conditional_update(client: TestClient) -> None:
    url = f"/fhir/Patient?identifier={BSN_SYSTEM}|111222333"
    r = client.put(url, json=patient(bsn="111222333"))
    assert r.status_code == 201
    pid = r.json()["id"]
    r = client.put(url, json=patient(bsn="111222333", gender="male"))
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["gender"] == "male"
    client.put("/fhir/Patient/twin", json=patient(bsn="111222333", id="twin"))
    assert client.put(url, json=patient(bsn="111222333")).status_code == 412
    by_id = client.put(f"/fhir/Patient?_id={pid}", json=patient(bsn="111222333", id=pid))
    assert by_id.status_code == 200 and by_id.json()["id"] == pid


def test_conditional_delete(client: TestClient) -> None:
    pid, _ = create(client, patient(bsn="222333444"))
    assert client.delete(f"/fhir/Patient?identifier={BSN_SYSTEM}|222333444").status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    create(client, patient(bsn="555666777"))
    create(client, patient(bsn="555666777"))
    assert client.delete("/fhir/Patient?identifier=555666777").status_code == 412
    assert client.delete("/fhir/Patient?identifier=000000000").status_code == 204


def test_json_patch(client: TestClient) -> None:
    pid, _ = create(client, patient())
    ops = [{"op": "replace", "path": "/name/0/family", "value": "de Vries"},
           {"op": "add", "path": "/gender", "value": "female"}]
    ctype = {"Content-Type": "application/json-patch+json"}
    r = client.patch(f"/fhir/Patient/{pid}", json=ops, headers=ctype)
    assert r.status_code == 200, r.text
    assert r.json()["name"][0]["family"] == "de Vries" and r.json()["meta"]["versionId"] == "2"
    failing = [{"op": "test", "path": "/gender", "value": "male"}]
    assert client.patch(f"/fhir/Patient/{pid}", json=failing, headers=ctype).status_code == 422
    invalid = [{"op": "add", "path": "/gender", "value": 12}]
    r = client.patch(f"/fhir/Patient/{pid}", json=invalid, headers=ctype)
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Patient.gender"]
    retype = [{"op": "replace", "path": "/id", "value": "x"}]
    assert client.patch(f"/fhir/Patient/{pid}", json=retype, headers=ctype).status_code == 422
    stale = client.patch(f"/fhir/Patient/{pid}", json=ops, headers={**ctype, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert client.patch(f"/fhir/Patient/{pid}", json=ops, headers={"Content-Type": JSON}
                        ).status_code == 400
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_invalid_resource_is_rejected_and_not_stored(client: TestClient) -> None:
    bad = patient(birthDate="2022-13-45")
    r = client.post("/fhir/Patient", json=bad)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient.birthDate"]
    unknown = client.post("/fhir/Patient", json=patient(colour="blue"))
    assert unknown.status_code == 422
    assert unknown.json()["issue"][0]["expression"] == ["Patient.colour"]
    wrong_type = client.post("/fhir/Patient", json=observation("Patient/x"))
    assert wrong_type.status_code == 400
    assert client.get("/fhir/_history").json().get("entry") is None


def test_error_messages_do_not_echo_values(client: TestClient) -> None:
    bsn = "123456782"
    r = client.post("/fhir/Patient", json=patient(bsn=bsn, birthDate=bsn))
    assert r.status_code == 422
    assert bsn not in r.text
