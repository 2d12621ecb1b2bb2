"""Transfer over HTTP (in-process app, in-process relay): `$transfer`, status, bulk jobs,
review decisions and the inbox's guard, with the errors a client sees."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import update

from ekd.api.app import build_services
from ekd.config import Settings
from ekd.security.principal import Role
from ekd.store.database import Database
from ekd.store.schema import transfer_inbox
from tests.app_helpers import fhir_client
from tests.test_transfer_flow import patient_id_of
from tests.transfer_helpers import BASE, GGD, THUISZORG, World, build_world

URA = "http://fhir.nl/fhir/NamingSystem/ura"


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    settings = Settings(database_url=str(database.url), base_url=BASE, jgz_enforce=True,
                        key_dir=str(tmp_path / "keys"), exchange_worker=False)
    return build_world(build_services(settings, database), tmp_path)


def transfer_body(recipient: str = GGD, reason: str = "age4") -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "recipient", "valueIdentifier": {"system": URA, "value": recipient}},
        {"name": "reason", "valueCode": reason}]}


def test_transfer_status_and_receipts_over_http(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG, role=Role.JEUGDARTS) as c:
        started = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body())
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        assert location.endswith(next(p["valueString"] for p in started.json()["parameter"]
                                      if p["name"] == "transfer"))
        path = location[location.index("/exchange/"):]
        assert c.get(path).json()["state"] == "queued"
        world.pump()
        shown = c.get(path).json()
        assert shown["state"] == "imported"
        assert shown["receipts"] == {"technical": True, "application": True}
        assert "package" not in shown  # the ciphertext is never shown
        listed = c.get("/exchange/transfers", params={"state": "imported"}).json()
        assert [t["id"] for t in listed["transfers"]] == [shown["id"]]


def test_bad_requests_name_the_element(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG, role=Role.JEUGDARTS) as c:
        bad = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body("12"))
        assert bad.status_code == 400
        assert "recipient" in str(bad.json()["issue"][0].get("expression"))
        unknown = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body("44440004"))
        assert unknown.status_code == 422
        assert unknown.json()["issue"][0]["expression"] == ["recipient"]
        reason = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body(reason="fun"))
        assert reason.status_code == 400
        missing = c.post("/fhir/Patient/nope/$transfer", json=transfer_body())
        assert missing.status_code == 404
        job = c.post("/exchange/jobs", json={"born_from": "yesterday", "born_to": "2024-01-01"})
        assert job.status_code == 400 and job.json()["resourceType"] == "OperationOutcome"
        assert c.get("/exchange/transfers/no-such").status_code == 404


def test_roles_and_organisations_are_checked(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG,
                     role=Role.ADMINISTRATIEF_MEDEWERKER) as c:
        refused = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body())
        assert refused.status_code == 403
    with fhir_client(world.orgs[THUISZORG], org=GGD, role=Role.JEUGDARTS) as c:
        # another organisation's caller on this server: not its child, not its transfers
        assert c.post(f"/fhir/Patient/{child}/$transfer",
                      json=transfer_body()).status_code == 404
        assert c.get("/exchange/transfers").status_code == 403
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG) as c:
        c.auth = None
        assert c.get("/exchange/transfers").status_code == 401


def test_the_inbox_accepts_only_the_relay(world: World) -> None:
    with fhir_client(world.orgs[GGD], org=GGD) as c:
        # a bearer token is no relay certificate
        answer = c.post("/exchange/inbox", content=b"a.b.c.d.e",
                        headers={"Ekd-Kind": "package", "Ekd-Sender-Ura": THUISZORG})
        assert answer.status_code == 401
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_bulk_job_over_http(world: World) -> None:
    for index in range(3):
        world.load_child(THUISZORG, index)
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG, role=Role.JEUGDARTS) as c:
        started = c.post("/exchange/jobs", json={
            "born_from": "2000-01-01", "born_to": "2026-12-31", "recipient": GGD})
        assert started.status_code == 202, started.text
        job = started.json()["job"]
        assert started.json()["children"] == 3
        world.pump()
        report = c.get(f"/exchange/jobs/{job}").json()
        assert report["total"] == 3
        assert report["counts"]["imported"] + report["counts"]["refused"] == 3
        assert [j["job"] if "job" in j else j.get("id") for j in
                c.get("/exchange/jobs").json()["jobs"]] == [job]


def test_a_reviewer_rejects_over_http(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    with fhir_client(world.orgs[THUISZORG], org=THUISZORG, role=Role.JEUGDARTS) as sender:
        first = sender.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body())
        world.pump()
        ggd = world.orgs[GGD]
        with fhir_client(ggd, org=GGD, role=Role.JEUGDARTS) as receiver:
            received = receiver.get("/exchange/received").json()["received"]
            local = received[0]["patient_id"]
            patient = receiver.get(f"/fhir/Patient/{local}").json()
            patient["birthDate"] = "2001-01-01"  # the GGD's record differs now
            assert receiver.put(f"/fhir/Patient/{local}", json=patient).status_code == 200
            second = sender.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body())
            world.pump()
            waiting = receiver.get("/exchange/received", params={"state": "review"}).json()
            assert len(waiting["received"]) == 1
            pk = waiting["received"][0]["pk"]
            bad = receiver.post(f"/exchange/received/{pk}/decision", json={"decision": "x"})
            assert bad.status_code == 400
            decided = receiver.post(f"/exchange/received/{pk}/decision",
                                    json={"decision": "reject"})
            assert decided.status_code == 200 and decided.json()["state"] == "rejected"
            again = receiver.post(f"/exchange/received/{pk}/decision",
                                  json={"decision": "new"})
            assert again.status_code == 409
        world.pump()
        second_id = second.headers["Location"].rsplit("/", 1)[1]
        shown = sender.get(f"/exchange/transfers/{second_id}").json()
        assert shown["state"] == "rejected"
        assert shown["problems"][0]["code"] == "review-rejected"
        assert first.status_code == 202


def test_worker_off_means_nothing_moves(world: World) -> None:
    """The fixture's servers run no worker thread: the tests pump by hand (a sanity check of
    the harness, so the other tests' states are what pumping made)."""
    child = patient_id_of(world.load_child(THUISZORG))
    services = dataclasses.replace(world.orgs[THUISZORG])
    with fhir_client(services, org=THUISZORG, role=Role.JEUGDARTS) as c:
        started = c.post(f"/fhir/Patient/{child}/$transfer", json=transfer_body())
        path = started.headers["Location"]
        assert c.get(path[path.index("/exchange/"):]).json()["state"] == "queued"
    with world.orgs[GGD].db.write() as conn:
        assert conn.execute(update(transfer_inbox).values(claimed_until=None)).rowcount == 0
