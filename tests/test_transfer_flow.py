"""Dossier transfer through the in-process exchange: the happy path, exactly-once, matching.

Both organisations live on the same database (scoped apart); the relay is a function call
(`transfer_helpers.LocalRelay`), so every step can be observed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ekd.api.app import build_services
from ekd.config import Settings
from ekd.interaction.base import FhirRequest
from ekd.interaction.route import handle
from ekd.store.database import Database
from ekd.store.schema import resource, transfer_inbox
from ekd.transfer import outbox
from tests.transfer_helpers import BASE, GGD, THUISZORG, World, build_world, principal


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    settings = Settings(database_url=str(database.url), base_url=BASE, jgz_enforce=True,
                        key_dir=str(tmp_path / "keys"))
    return build_world(build_services(settings, database), tmp_path)


def send(world: World, patient_id: str, recipient: str = GGD, reason: str = "age4") -> dict:
    services = world.orgs[THUISZORG]
    resp = handle(services, FhirRequest(
        method="POST", base=BASE, type="Patient", id=patient_id, operation="transfer",
        principal=principal(THUISZORG), body={"resourceType": "Parameters", "parameter": [
            {"name": "recipient", "valueIdentifier": {
                "system": "http://fhir.nl/fhir/NamingSystem/ura", "value": recipient}},
            {"name": "reason", "valueCode": reason}]}))
    params = {p["name"]: p for p in (resp.body or {}).get("parameter", [])}
    return {"status": resp.status, "id": params["transfer"]["valueString"],
            "state": params["state"]["valueCode"], "body": resp.body}


def patient_id_of(response: dict) -> str:
    for entry in response["entry"]:
        location = entry["response"].get("location", "")
        if location.startswith("Patient/"):
            return location.split("/")[1]
    raise AssertionError("no Patient created")


def dossier(world: World, org: str, patient_id: str) -> list[dict]:
    services = world.orgs[org]
    resp = handle(services, FhirRequest(method="GET", base=BASE, type="Patient", id=patient_id,
                                        operation="everything", principal=principal(org)))
    return [e["resource"] for e in (resp.body or {})["entry"]]


def transfer_state(world: World, transfer_id: str) -> str:
    from ekd.transfer import status

    row = status.transfer_view(world.orgs[THUISZORG], THUISZORG, transfer_id)
    assert row is not None
    return str(row["state"])


def test_a_dossier_arrives_whole_and_once(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    sent = dossier(world, THUISZORG, child)
    started = send(world, child)
    assert started["status"] == 202 and started["state"] == "queued"
    world.pump()
    assert transfer_state(world, started["id"]) == "imported"
    services = world.orgs[GGD]
    with services.db.read() as conn:
        row = conn.execute(select(transfer_inbox).where(
            transfer_inbox.c.transfer_id == started["id"])).mappings().one()
    assert row["state"] == "imported"
    received = dossier(world, GGD, row["patient_id"])
    assert _shape(received, drop_provenance=True) == _shape(sent, drop_provenance=False)
    # the receiver added one Provenance naming the transfer; the sender's came along too
    provenances = [r for r in received if r["resourceType"] == "Provenance"]
    assert len(provenances) == 2
    # the sender keeps its copy, marked as transferred (and findable by the mark)
    found = handle(world.orgs[THUISZORG], FhirRequest(
        method="GET", base=BASE, type="Patient", principal=principal(THUISZORG),
        params=[("_tag", "https://fhir.ekd.nl/CodeSystem/transfer-status|transferred")]))
    assert [e["resource"]["id"] for e in (found.body or {})["entry"]] == [child]


def _shape(resources: list[dict], *, drop_provenance: bool) -> list[tuple[str, str]]:
    """Each resource without its ids, meta and references: what must survive the transfer."""
    import orjson

    def strip(node: object) -> object:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()
                    if k not in ("id", "meta", "reference", "fullUrl")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    out = []
    for r in resources:
        if drop_provenance and r["resourceType"] == "Provenance":
            continue
        out.append((r["resourceType"], orjson.dumps(strip(r), option=orjson.OPT_SORT_KEYS)
                    .decode()))
    return sorted(out)


def test_a_resend_imports_nothing_twice(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    started = send(world, child)
    sender = world.orgs[THUISZORG]
    assert sender.exchange is not None
    assert outbox.dispatch_due(sender, sender.exchange) == 1
    world.relay.deliver_all()  # delivered once, not yet processed
    services = world.orgs[GGD]
    assert services.exchange is not None
    with services.db.read() as conn:
        before = conn.execute(select(func.count()).select_from(resource)
                              .where(resource.c.org == GGD)).scalar()
    # the relay delivers the same message again (at-least-once): still processing → 409
    again = dataclasses.replace(world.relay.log[0], answer=None, error=None)
    world.relay.deliver(again)
    assert again.error is not None and again.error.status == 409
    world.pump()
    again = dataclasses.replace(world.relay.log[0], answer=None, error=None)
    world.relay.deliver(again)
    assert again.error is None and again.answer == world.relay.log[0].answer
    world.pump()
    with services.db.read() as conn:
        after = conn.execute(select(func.count()).select_from(resource)
                             .where(resource.c.org == GGD)).scalar()
        imports = conn.execute(select(func.count()).select_from(transfer_inbox)).scalar()
    assert imports == 1
    assert after > before
    assert transfer_state(world, started["id"]) == "imported"


def ggd_counts(world: World) -> dict[str, int]:
    services = world.orgs[GGD]
    with services.db.read() as conn:
        rows = conn.execute(select(resource.c.type, func.count()).where(
            resource.c.org == GGD).group_by(resource.c.type)).all()
    return {t: int(n) for t, n in rows}


def test_a_second_transfer_of_the_same_child_merges_without_duplicates(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    first = send(world, child)
    world.pump()
    assert transfer_state(world, first["id"]) == "imported"
    after_first = ggd_counts(world)
    second = send(world, child, reason="move")
    world.pump()
    assert transfer_state(world, second["id"]) == "imported"
    after_second = ggd_counts(world)
    # one more receiver Provenance (and the sender's new one); nothing else duplicated
    assert after_second.pop("Provenance") == after_first.pop("Provenance") + 2
    assert after_second == after_first
    services = world.orgs[GGD]
    with services.db.read() as conn:
        rows = conn.execute(select(transfer_inbox.c.state, transfer_inbox.c.patient_id)).all()
    assert [r.state for r in rows] == ["imported", "imported"]
    assert rows[0].patient_id == rows[1].patient_id
    # what the sender sent unchanged got no new version; a changed resource did
    assert set(ggd_versions(world).values()) == {1}
    observation = next(r for r in dossier(world, THUISZORG, child)
                       if r["resourceType"] == "Observation")
    observation["note"] = [{"text": "gecorrigeerd"}]
    changed = handle(world.orgs[THUISZORG], FhirRequest(
        method="PUT", base=BASE, type="Observation", id=observation["id"], body=observation,
        principal=principal(THUISZORG)))
    assert changed.status == 200, changed.body
    third = send(world, child, reason="move")
    world.pump()
    assert transfer_state(world, third["id"]) == "imported"
    versions = ggd_versions(world)
    assert versions.pop("Observation") == 2
    assert set(versions.values()) == {1}


def ggd_versions(world: World) -> dict[str, int]:
    """Highest version per resource type at the GGD."""
    services = world.orgs[GGD]
    with services.db.read() as conn:
        rows = conn.execute(select(resource.c.type, func.max(resource.c.version)).where(
            resource.c.org == GGD).group_by(resource.c.type)).all()
    return {t: int(n) for t, n in rows}


def test_a_known_bsn_with_another_name_goes_to_review(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    first = send(world, child)
    world.pump()
    services = world.orgs[GGD]
    with services.db.read() as conn:
        local = conn.execute(select(transfer_inbox.c.patient_id)).scalar_one()
    # the GGD corrected the family name meanwhile: BSN and birth date agree, the name not
    patient = handle(services, FhirRequest(method="GET", base=BASE, type="Patient", id=local,
                                           principal=principal(GGD))).body
    assert patient is not None
    patient["name"][0]["family"] = "Anders"
    assert handle(services, FhirRequest(method="PUT", base=BASE, type="Patient", id=local,
                                        body=patient, principal=principal(GGD))).status == 200
    before = ggd_counts(world)
    second = send(world, child, reason="move")
    world.pump()
    with services.db.read() as conn:
        row = conn.execute(select(transfer_inbox).order_by(transfer_inbox.c.pk.desc())
                           ).mappings().first()
    assert row is not None and row["state"] == "review"
    assert row["problems"][0]["code"] == "review" and "name" in row["problems"][0]["message"]
    assert ggd_counts(world) == before  # nothing imported while in review
    assert transfer_state(world, second["id"]) == "accepted"
    assert transfer_state(world, first["id"]) == "imported"
    # a reviewer decides: a different child after all
    from ekd.transfer import importer

    assert services.exchange is not None
    assert importer.process(services, services.exchange, dict(row), decision="new") == "imported"
    world.pump()
    assert transfer_state(world, second["id"]) == "imported"
    assert ggd_counts(world)["Patient"] == before["Patient"] + 1


def test_receipts_for_a_package_whose_sending_was_not_recorded(world: World) -> None:
    """The sender crashed after the relay stored the package, before it committed `sent`:
    the receipts that come back prove the package went, and nothing is sent again."""
    from ekd.store.schema import transfer_outbox

    child = patient_id_of(world.load_child(THUISZORG))
    started = send(world, child)
    services = world.orgs[THUISZORG]
    mine = (transfer_outbox.c.org == THUISZORG, transfer_outbox.c.kind == "package")
    with services.db.read() as conn:
        message = conn.execute(select(transfer_outbox).where(*mine)).mappings().one()
    # the relay got it (as the sender's post did), but the sender recorded nothing
    world.relay.accept(THUISZORG, {"id": message["message_id"], "recipient": GGD,
                                   "kind": "package", "transfer": started["id"],
                                   "body": message["body"]})
    world.relay.deliver_all()
    receiver = world.orgs[GGD]
    assert receiver.exchange is not None
    from ekd.transfer import importer

    importer.process_due(receiver, receiver.exchange)
    outbox.dispatch_due(receiver, receiver.exchange)  # the application receipt
    world.relay.deliver_all()
    assert transfer_state(world, started["id"]) == "imported"
    with services.db.read() as conn:
        assert conn.execute(select(transfer_outbox.c.state).where(*mine)).scalar_one() == "sent"
    assert world.relay.queue == []


def test_both_sides_audit_the_transfer_under_its_id(world: World) -> None:
    from ekd.store.schema import audit_event

    child = patient_id_of(world.load_child(THUISZORG))
    started = send(world, child)
    world.pump()
    found: dict[str, list[str]] = {}
    with world.orgs[THUISZORG].db.read() as conn:
        for org, content in conn.execute(select(audit_event.c.org, audit_event.c.content)
                                         .where(audit_event.c.subtype == "transfer")):
            details = [d for e in content.get("entity", []) for d in e.get("detail", [])]
            if {"type": "transfer", "valueString": started["id"]} in details:
                found.setdefault(org, []).append(
                    next(c["code"] for c in content["subtype"] if c["code"] != "transfer"))
    assert set(found[THUISZORG]) >= {"transfer-export", "transfer-imported"}
    assert found[GGD] == ["transfer-import"]
