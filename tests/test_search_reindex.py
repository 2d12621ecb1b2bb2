"""SearchParameters added at run time, and `ekd reindex` (ekd/search/reindex.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from ekd.interaction.base import Services
from ekd.search import reindex
from ekd.store.schema import INDEX_TABLES, reindex_job

MARITAL = {
    "resourceType": "SearchParameter",
    "url": "https://fhir.ekd.nl/fhir/SearchParameter/test-marital",
    "name": "TestMarital",
    "status": "active",
    "description": "Marital status (test parameter)",
    "code": "test-marital",
    "base": ["Patient"],
    "type": "token",
    "expression": "Patient.maritalStatus",
}


def _patient(client: TestClient, code: str) -> str:
    body = {"resourceType": "Patient", "gender": "female", "maritalStatus": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": code}]}}
    r = client.post("/fhir/Patient", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _ids(client: TestClient, query: str) -> set[str]:
    r = client.get(f"/fhir/Patient?{query}", headers={"Prefer": "handling=strict"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_search_parameter_added_at_run_time_then_reindex(client: TestClient,
                                                         services: Services) -> None:
    old = _patient(client, "M")
    # Unknown before it exists: a 400 under handling=strict.
    r = client.get("/fhir/Patient?test-marital=M", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400
    assert client.post("/fhir/SearchParameter", json=MARITAL).status_code == 201
    new = _patient(client, "M")
    _patient(client, "S")
    # New writes are indexed at once; the older resource only after a reindex.
    assert _ids(client, "test-marital=M") == {new}
    assert not reindex.status(services).current
    report = reindex.run(services)
    assert report.reindexed == report.total >= 3
    assert _ids(client, "test-marital=M") == {old, new}
    assert reindex.status(services).current
    # Nothing left to do for the same parameters.
    assert reindex.run(services).already_done
    # Retiring the parameter takes it out of service.
    retired = client.get("/fhir/SearchParameter", params={"url": MARITAL["url"]}).json()
    sp = retired["entry"][0]["resource"]
    sp["status"] = "retired"
    assert client.put(f"/fhir/SearchParameter/{sp['id']}", json=sp).status_code == 200
    assert client.get("/fhir/Patient?test-marital=M",
                      headers={"Prefer": "handling=strict"}).status_code == 400


def test_interrupted_reindex_resumes_after_the_last_batch(client: TestClient,
                                                          services: Services) -> None:
    ids = [_patient(client, "M") for _ in range(7)]
    with services.db.write() as conn:  # as after an upgrade from before search indexing
        for table in INDEX_TABLES.values():
            conn.execute(table.delete())
    assert _ids(client, "gender=female") == set()
    assert _ids(client, "_id=" + ids[0]) == {ids[0]}  # _id needs no index rows

    calls: list[tuple[int, int]] = []

    def stop_after_two_batches(done: int, total: int) -> None:
        calls.append((done, total))
        if len(calls) == 3:  # the initial call, then two batches of 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reindex.run(services, batch=3, progress=stop_after_two_batches)
    with services.db.read() as conn:
        job = conn.execute(select(reindex_job)).first()
        tokens = conn.execute(select(func.count()).select_from(
            INDEX_TABLES["search_token"])).scalar_one()
    assert job is not None and not job.done and job.last_pk > 0
    assert tokens > 0  # the committed batches stay
    calls.clear()
    report = reindex.run(services, batch=3, progress=lambda d, t: calls.append((d, t)))
    assert report.resumed_after == job.last_pk
    assert report.reindexed == 1  # 7 patients: 6 done before the interruption
    assert calls[0] == (6, 7) and calls[-1] == (7, 7)
    assert _ids(client, "gender=female") == set(ids)


def test_a_broken_search_parameter_is_refused(client: TestClient) -> None:
    bad = dict(MARITAL, expression="Patient.maritalStatus.where(", url=MARITAL["url"] + "-bad")
    r = client.post("/fhir/SearchParameter", json=bad)
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert "FHIRPath" in issue["diagnostics"]
    assert issue["expression"] == ["SearchParameter.expression"]
    r = client.post("/fhir/SearchParameter", json=dict(bad, expression="Patient.gender",
                                                       type="fuzzy"))
    assert r.status_code == 422
