"""Patient/$everything (ekd/operation/patient_everything.py) on demo dossiers."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient

from ekd.cli.demo import post_bundles
from ekd.jgz import demo

REF = dt.date(2026, 11, 1)


def _load(client: TestClient, children: int = 2) -> list[dict]:
    assert post_bundles(client, "/fhir", [demo.shared_bundle()]).rejected == 0
    bundles = list(demo.generate(children, seed=5, reference_date=REF))
    assert post_bundles(client, "/fhir", bundles).rejected == 0
    return bundles


def _patient_id(client: TestClient, bundle: dict) -> str:
    (patient,) = [e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "Patient"]
    bsn = patient["identifier"][0]
    r = client.get("/fhir/Patient", params={"identifier": f"{bsn['system']}|{bsn['value']}"})
    (entry,) = r.json()["entry"]
    return entry["resource"]["id"]


def _all_pages(client: TestClient, url: str) -> tuple[list[dict], int]:
    entries: list[dict] = []
    pages = 0
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        entries += body.get("entry", [])
        pages += 1
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), "")
    return entries, pages


def test_everything_is_the_whole_dossier_and_nothing_of_another_child(client: TestClient
                                                                      ) -> None:
    first, second = _load(client)
    pid = _patient_id(client, first)
    r = client.get(f"/fhir/Patient/{pid}/$everything")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "searchset"
    got = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]}
    assert body["total"] == len(got)
    # Every resource of the child's transaction Bundle is in it (by type and count) ...
    sent: dict[str, int] = {}
    for e in first["entry"]:
        t = e["resource"]["resourceType"]
        sent[t] = sent.get(t, 0) + 1
    got_types: dict[str, int] = {}
    for t, _ in got:
        got_types[t] = got_types.get(t, 0) + 1
    for t, n in sent.items():
        if t in ("Organization", "Practitioner", "PractitionerRole", "Location"):
            assert got_types.get(t, 0) >= 1, t  # the ones this child's records refer to
        else:
            assert got_types.get(t) == n, (t, got_types.get(t), n)
    # ... with the organisations and practitioners its records point at ...
    assert got_types.get("Organization", 0) >= 1 and got_types.get("Practitioner", 0) >= 1
    # ... and nothing that belongs to the other child.
    other = _patient_id(client, second)
    assert ("Patient", other) not in got
    for e in body["entry"]:
        assert other not in str(e["resource"].get("subject", ""))
        assert other not in str(e["resource"].get("patient", ""))


def test_everything_pages_type_filter_since_and_errors(client: TestClient) -> None:
    (bundle,) = _load(client, 1)
    pid = _patient_id(client, bundle)
    whole = client.get(f"/fhir/Patient/{pid}/$everything").json()
    paged, pages = _all_pages(client, f"/fhir/Patient/{pid}/$everything?_count=20")
    assert pages == -(-whole["total"] // 20)
    assert [e["fullUrl"] for e in paged] == [e["fullUrl"] for e in whole["entry"]]

    only = client.get(f"/fhir/Patient/{pid}/$everything",
                      params={"_type": "Observation,Immunization"}).json()
    assert {e["resource"]["resourceType"] for e in only["entry"]} == {"Observation",
                                                                      "Immunization"}

    later = client.get(f"/fhir/Patient/{pid}/$everything",
                       params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert later["total"] == 0 and "entry" not in later

    assert client.get("/fhir/Patient/nope/$everything").status_code == 404
    r = client.get(f"/fhir/Patient/{pid}/$everything", params={"_type": "Nonsense"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["_type"]
    r = client.get(f"/fhir/Patient/{pid}/$everything", params={"start": "2020-01-01"})
    assert r.status_code == 400
    assert client.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
    assert client.get(f"/fhir/Patient/{pid}/$everything").status_code == 410


def test_everything_leaves_out_deleted_and_follows_updates(client: TestClient) -> None:
    (bundle,) = _load(client, 1)
    pid = _patient_id(client, bundle)
    before = client.get(f"/fhir/Patient/{pid}/$everything",
                        params={"_type": "Observation"}).json()
    victim = before["entry"][0]["resource"]
    assert client.delete(f"/fhir/Observation/{victim['id']}").status_code in (200, 204)
    moved = before["entry"][1]["resource"]
    other = client.post("/fhir/Patient", json={"resourceType": "Patient"}).json()["id"]
    moved["subject"] = {"reference": f"Patient/{other}"}
    r = client.put(f"/fhir/Observation/{moved['id']}", json=moved)
    assert r.status_code == 200, r.text
    after = client.get(f"/fhir/Patient/{pid}/$everything",
                       params={"_type": "Observation"}).json()
    ids = {e["resource"]["id"] for e in after["entry"]}
    assert after["total"] == before["total"] - 2
    assert victim["id"] not in ids and moved["id"] not in ids
