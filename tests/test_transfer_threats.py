"""Every row of TRANSFER.md's threat table, end to end through sender, relay and receiver (in
process): each shows that nothing was imported where it must not be, and which receipt or error
came back. The cryptographic rows are also tested one level down (test_transfer_seal.py)."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select, update

from ekd.api.app import build_services
from ekd.audit import log as audit_log
from ekd.config import Settings
from ekd.errors import FhirError
from ekd.exchange.trust import Credentials
from ekd.interaction.base import FhirRequest
from ekd.interaction.route import handle
from ekd.store.database import Database
from ekd.store.schema import audit_event, resource, transfer, transfer_inbox
from ekd.transfer import inbox, outbox, seal, status
from tests.test_transfer_flow import patient_id_of, send
from tests.transfer_helpers import (
    BASE,
    GGD,
    OTHER,
    THUISZORG,
    Message,
    World,
    build_world,
    principal,
)


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    settings = Settings(database_url=str(database.url), base_url=BASE, jgz_enforce=True,
                        key_dir=str(tmp_path / "keys"))
    return build_world(build_services(settings, database), tmp_path)


def creds(world: World, ura: str) -> Credentials:
    return Credentials.load(world.pki.folder / f"{ura}.pem", world.pki.folder / f"{ura}.key",
                            world.pki.chain_path)


def queued(world: World) -> tuple[dict, Message]:
    """A child at the thuiszorg, a transfer to the GGD queued and handed to the relay."""
    child = patient_id_of(world.load_child(THUISZORG))
    started = send(world, child)
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    assert outbox.dispatch_due(services, services.exchange) == 1
    message = world.relay.queue[0]
    assert message.body["kind"] == "package"
    return started, message


def imported_count(world: World, org: str = GGD) -> int:
    with world.orgs[org].db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(resource).where(
            resource.c.org == org, resource.c.type == "Patient")).scalar() or 0)


def inbox_row(world: World, org: str = GGD) -> dict:
    with world.orgs[org].db.read() as conn:
        return dict(conn.execute(select(transfer_inbox).where(transfer_inbox.c.org == org))
                    .mappings().one())


def sender_state(world: World, transfer_id: str) -> dict:
    row = status.transfer_view(world.orgs[THUISZORG], THUISZORG, transfer_id)
    assert row is not None
    return row


def reseal(message: Message, change, *, sign_as: Credentials | None, to: Credentials) -> None:
    """What an attacker holding the recipient's certificate (public) could do: open a package
    addressed to a key the test holds, change it, encrypt it again; optionally sign it anew."""
    bundle = orjson.loads(seal.decrypt(message.body["body"], to))
    change(bundle)
    if sign_as is not None:
        bundle = seal.sign_bundle({k: v for k, v in bundle.items() if k != "signature"},
                                  sign_as)
    message.body["body"] = seal.encrypt(orjson.dumps(bundle), to.chain[0])


def rejected_with(world: World, started: dict, code_prefix: str) -> dict:
    """The receiver rejected it (nothing imported) and the sender got a signed receipt."""
    world.pump()
    row = inbox_row(world)
    assert row["state"] == "rejected", row["problems"]
    assert row["problems"][0]["code"].startswith(code_prefix), row["problems"]
    assert imported_count(world) == 0
    state = sender_state(world, started["id"])
    assert state["state"] == "rejected"
    assert row["problems"][0]["code"] in [p["code"] for p in state["problems"]]
    return row


def test_altered_payload_fails_the_signature(world: World) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        patient = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        patient["birthDate"] = "2020-01-01"

    reseal(message, change, sign_as=None, to=creds(world, GGD))
    rejected_with(world, started, "signature")


def test_altered_envelope_fails_the_signature(world: World) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        bundle["entry"][0]["resource"]["reason"]["coding"][0]["code"] = "move"

    reseal(message, change, sign_as=None, to=creds(world, GGD))
    rejected_with(world, started, "signature")


@pytest.mark.parametrize("part", [0, 1, 2, 3, 4])
def test_altered_jwe_fails_decryption(world: World, part: int) -> None:
    started, message = queued(world)
    parts = message.body["body"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4)))
    raw[len(raw) // 2] ^= 0x01
    parts[part] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    message.body["body"] = ".".join(parts)
    world.pump()
    row = inbox_row(world)
    assert row["state"] == "rejected"
    assert row["problems"][0]["code"].startswith("jwe-")
    assert imported_count(world) == 0
    assert sender_state(world, started["id"])["state"] == "rejected"


def test_replay_gets_the_same_receipt_and_no_second_import(world: World) -> None:
    started, _message = queued(world)
    world.pump()
    first = next(m for m in world.relay.log if m.body["kind"] == "package")
    assert imported_count(world) == 1
    replay = Message(first.sender, dict(first.body))
    world.relay.deliver(replay)
    assert replay.answer == first.answer
    world.pump()
    assert imported_count(world) == 1
    assert sender_state(world, started["id"])["state"] == "imported"


def test_an_old_package_is_flagged_stale(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    from ekd.transfer import sender

    with services.db.write() as conn:
        row = sender.start(services.exchange, conn, principal=principal(THUISZORG),
                           patient_id=child, recipient=GGD, reason="move")
        old = datetime.now(UTC) - timedelta(days=30)
        conn.execute(update(transfer).where(transfer.c.id == row["id"]).values(created=old))
        row["created"] = old
        sender.run_to_queue(services, services.exchange, conn, row, principal(THUISZORG))
    world.pump()
    received = inbox_row(world)
    assert received["state"] == "imported"
    assert received["problems"][0]["code"] == "stale"


def test_a_package_for_b_delivered_to_c_cannot_be_opened(world: World) -> None:
    _started, message = queued(world)
    message.body["recipient"] = OTHER
    world.pump()
    row = inbox_row(world, OTHER)
    assert row["state"] == "rejected"
    assert row["problems"][0]["code"] in ("jwe-recipient", "jwe-decrypt")
    assert imported_count(world, OTHER) == 0 and imported_count(world, GGD) == 0


def test_a_package_for_b_re_encrypted_for_c_names_b(world: World) -> None:
    """Even when C can open it (the attacker re-encrypted it for C), the signed recipient
    is B, so C refuses it."""
    _started, message = queued(world)
    bundle = orjson.loads(seal.decrypt(message.body["body"], creds(world, GGD)))
    message.body["body"] = seal.encrypt(orjson.dumps(bundle), creds(world, OTHER).chain[0])
    message.body["recipient"] = OTHER
    world.pump()
    row = inbox_row(world, OTHER)
    assert row["state"] == "rejected" and row["problems"][0]["code"] == "recipient"
    assert imported_count(world, OTHER) == 0


def test_sender_spoofing_is_refused(world: World) -> None:
    """The relay authenticated OTHER, but the package is signed by the thuiszorg."""
    _started, message = queued(world)
    message.sender = OTHER
    world.pump()
    row = inbox_row(world)
    assert row["sender"] == OTHER
    assert row["state"] == "rejected" and row["problems"][0]["code"] == "sender"
    assert imported_count(world) == 0


def test_signed_by_another_organisation_than_the_envelope_says(world: World) -> None:
    _started, message = queued(world)
    reseal(message, lambda b: None, sign_as=creds(world, OTHER), to=creds(world, GGD))
    world.pump()
    row = inbox_row(world)
    assert row["state"] == "rejected" and row["problems"][0]["code"] == "sender"
    assert imported_count(world) == 0


def test_a_revoked_sender_certificate_is_refused(world: World) -> None:
    _started, _message = queued(world)
    world.pki.revoke(THUISZORG)
    world.relay.deliver_all()
    for services in (world.orgs[GGD],):
        assert services.exchange is not None
        from ekd.transfer import importer

        importer.process_due(services, services.exchange)
    row = inbox_row(world)
    assert row["state"] == "rejected"
    assert row["problems"][0]["code"] == "signature-certificate"
    assert "revoked" in row["problems"][0]["message"]
    assert imported_count(world) == 0


def test_an_untrusted_signer_is_refused(world: World, tmp_path: Path) -> None:
    from ekd.exchange import pki as pki_module

    rogue = pki_module.init(tmp_path / "rogue")
    rogue.issue(THUISZORG, "Rogue thuiszorg")
    rogue_creds = Credentials.load(rogue.folder / f"{THUISZORG}.pem",
                                   rogue.folder / f"{THUISZORG}.key", rogue.chain_path)
    _started, message = queued(world)
    reseal(message, lambda b: None, sign_as=rogue_creds, to=creds(world, GGD))
    world.pump()
    row = inbox_row(world)
    assert row["state"] == "rejected" and row["problems"][0]["code"] == "signature-certificate"
    assert imported_count(world) == 0


@pytest.mark.parametrize("header", [{"alg": "none"}, {"alg": "RSA1_5"}, {"zip": "DEF"},
                                    {"jku": "https://evil.example/keys"},
                                    {"jwk": {"kty": "EC"}}])
def test_jwe_header_downgrades_and_injections_are_refused(world: World, header: dict) -> None:
    started, message = queued(world)
    parts = message.body["body"].split(".")
    protected = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    protected.update(header)
    parts[0] = base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
    message.body["body"] = ".".join(parts)
    rejected_with(world, started, "jwe-")


@pytest.mark.parametrize("header", [{"alg": "HS256"}, {"alg": "none"}, {"jku": "https://x"},
                                    {"x5u": "https://x"}, {"jwk": {"kty": "EC"}}])
def test_signature_downgrades_and_injections_are_refused(world: World, header: dict) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        token = base64.b64decode(bundle["signature"]["data"]).decode()
        head, _, sig = token.split(".")
        protected = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        protected.update(header)
        head = base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
        bundle["signature"]["data"] = base64.b64encode(f"{head}..{sig}".encode()).decode()

    reseal(message, change, sign_as=None, to=creds(world, GGD))
    rejected_with(world, started, "signature-")


def test_deeply_nested_json_is_refused(world: World) -> None:
    started, message = queued(world)
    message.body["body"] = seal.encrypt(b"[" * 5000 + b"]" * 5000, creds(world, GGD).chain[0])
    rejected_with(world, started, "malformed")


def test_an_oversized_package_is_refused_before_it_is_stored(world: World) -> None:
    services = world.orgs[GGD]
    assert services.exchange is not None
    huge = b"a." * 5 + b"a" * (services.settings.max_body_bytes + 10)
    with pytest.raises(FhirError):
        inbox.receive(services, services.exchange, inbox.Delivery(
            THUISZORG, "m", "package", "0f9a0b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", huge))
    # the API refuses it with 413 before the inbox (test_transfer_api); nothing was stored
    with services.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(transfer_inbox)).scalar() == 0


def test_malformed_package_is_refused(world: World) -> None:
    started, message = queued(world)
    message.body["body"] = seal.encrypt(b'{"resourceType": "Bundle"}', creds(world, GGD).chain[0])
    rejected_with(world, started, "signature")


def test_a_package_without_the_child_is_refused(world: World) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        bundle["entry"] = [e for e in bundle["entry"]
                           if e["resource"]["resourceType"] != "Patient"]

    reseal(message, change, sign_as=creds(world, THUISZORG), to=creds(world, GGD))
    rejected_with(world, started, "missing-patient")


@pytest.mark.parametrize("how", ["twice", "without-id"])
def test_a_resource_twice_or_without_id_is_refused(world: World, how: str) -> None:
    """References are mapped by "Type/id": a package where one names two resources, or a
    resource has none, is refused as a whole, naming why (before: three failed attempts
    ending in a misleading "created concurrently", or a KeyError in the worker)."""
    started, message = queued(world)

    def change(bundle: dict) -> None:
        entry = next(e for e in bundle["entry"]
                     if e["resource"]["resourceType"] == "Observation")
        if how == "twice":
            copy = orjson.loads(orjson.dumps(entry))
            copy["resource"]["status"] = "amended"
            bundle["entry"].append(copy)
        else:
            del entry["resource"]["id"]

    reseal(message, change, sign_as=creds(world, THUISZORG), to=creds(world, GGD))
    row = rejected_with(world, started, "malformed")
    assert row["problems"][0]["element"] == "Bundle.entry.resource.id"
    assert ("twice" if how == "twice" else "no id") in row["problems"][0]["message"]


def test_an_invalid_bsn_is_refused(world: World) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        patient = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        for identifier in patient["identifier"]:
            if identifier["system"].endswith("/bsn"):
                identifier["value"] = "123456789"  # fails the 11-test

    reseal(message, change, sign_as=creds(world, THUISZORG), to=creds(world, GGD))
    row = rejected_with(world, started, "invalid")
    assert "BSN" in row["problems"][0]["message"] or "bsn" in json.dumps(row["problems"])
    assert "123456789" not in json.dumps(row["problems"])


def test_an_invalid_resource_is_refused_naming_it(world: World) -> None:
    started, message = queued(world)

    def change(bundle: dict) -> None:
        obs = next(e["resource"] for e in bundle["entry"]
                   if e["resource"]["resourceType"] == "Observation")
        del obs["status"]  # 1..1 in R4

    reseal(message, change, sign_as=creds(world, THUISZORG), to=creds(world, GGD))
    row = rejected_with(world, started, "invalid-resource")
    assert row["problems"][0]["element"].startswith("Observation/")


def test_receiver_failing_mid_import_leaves_nothing_and_retries_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    started, _message = queued(world)
    world.relay.deliver_all()
    services = world.orgs[GGD]
    assert services.exchange is not None
    from ekd.store.resources import ResourceStore
    from ekd.transfer import importer

    original = ResourceStore.create_many

    def dying(self: ResourceStore, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("killed mid-import, the dossier written but not committed")

    monkeypatch.setattr(ResourceStore, "create_many", dying)
    with pytest.raises(RuntimeError):
        importer.process_due(services, services.exchange)
    assert imported_count(world) == 0
    with services.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(resource)
                            .where(resource.c.org == GGD)).scalar() == 0
    assert inbox_row(world)["state"] == "received"
    monkeypatch.setattr(ResourceStore, "create_many", original)
    with services.db.write() as conn:  # the lease of the dead worker runs out
        conn.execute(update(transfer_inbox).values(claimed_until=None))
    world.pump()
    assert inbox_row(world)["state"] == "imported"
    assert imported_count(world) == 1
    assert sender_state(world, started["id"])["state"] == "imported"


def test_two_identical_deliveries_at_once_import_once(world: World) -> None:
    _started, message = queued(world)
    world.relay.queue.clear()
    results: list[Message] = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        copy = Message(message.sender, dict(message.body))
        barrier.wait()
        world.relay.deliver(copy)
        results.append(copy)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(200 if m.error is None else m.error.status for m in results)
    assert statuses == [200, 409]
    world.pump()
    assert imported_count(world) == 1
    with world.orgs[GGD].db.read() as conn:
        assert conn.execute(select(func.count()).select_from(transfer_inbox)).scalar() == 1


def test_an_objection_recorded_after_queueing_cancels_at_dispatch(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    started = send(world, child)
    assert started["state"] == "queued"
    services = world.orgs[THUISZORG]
    objection = {
        "resourceType": "Consent", "status": "active",
        "meta": {"profile": ["https://fhir.ekd.nl/StructureDefinition/jgz-TransferConsent"]},
        "extension": [{"url": "https://fhir.ekd.nl/StructureDefinition/jgz-consent-source",
                       "valueCodeableConcept": {"coding": [{
                           "system": "urn:oid:2.16.840.1.113883.2.4.4.40.435", "code": "03"}]}}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "urn:oid:2.16.840.1.113883.2.4.4.40.267",
                                  "code": "1395"}]}],
        "patient": {"reference": f"Patient/{child}"}, "dateTime": "2099-01-01",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTOUT"}]},
        "provision": {"type": "deny"}}
    created = handle(services, FhirRequest(method="POST", base=BASE, type="Consent",
                                           body=objection, principal=principal(THUISZORG)))
    assert created.status == 201
    world.pump()
    state = sender_state(world, started["id"])
    assert state["state"] == "cancelled" and state["problems"][0]["code"] == "objection"
    assert not world.relay.log  # nothing left
    with services.db.read() as conn:
        subtypes = [r.subtype for r in conn.execute(select(audit_event.c.subtype).where(
            audit_event.c.org == THUISZORG))]
    assert "transfer" in subtypes or any("transfer" in s for s in subtypes)


def test_an_objection_before_the_request_cancels_it(world: World) -> None:
    response = world.load_child(THUISZORG, index=0)
    child = patient_id_of(response)
    services = world.orgs[THUISZORG]
    consent = handle(services, FhirRequest(
        method="GET", base=BASE, type="Consent", params=[("patient", f"Patient/{child}")],
        principal=principal(THUISZORG))).body or {}
    for entry in consent.get("entry", []):
        content = entry["resource"]
        content["provision"]["type"] = "deny"
        content["category"][0]["coding"][0]["code"] = "1395"
        content["policyRule"]["coding"][0]["code"] = "OPTOUT"
        content["dateTime"] = "2099-01-01"
        assert handle(services, FhirRequest(
            method="PUT", base=BASE, type="Consent", id=content["id"], body=content,
            principal=principal(THUISZORG))).status == 200
    if not consent.get("entry"):
        pytest.skip("this demo child has no transfer consent to turn into an objection")
    started = send(world, child)
    assert started["status"] == 422 and started["state"] == "cancelled"
    assert "objection" in json.dumps(started["body"])


def test_a_tampered_directory_entry_refuses_the_send(world: World) -> None:
    entries_path = Path(world.orgs[THUISZORG].settings.exchange_directory) / "entries.json"
    entries = json.loads(entries_path.read_text())
    token = next(iter(entries.values())) if isinstance(entries, dict) else entries[0]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["endpoint"] = "https://evil.example"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{head}.{forged}.{sig}"
    if isinstance(entries, dict):
        key = next(iter(entries))
        entries[key] = tampered
    else:
        entries[0] = tampered
    entries_path.write_text(json.dumps(entries))
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    services.exchange._directory = None  # read the directory again
    child = patient_id_of(world.load_child(THUISZORG))
    with pytest.raises(FhirError) as refused:
        send(world, child)
    assert refused.value.status == 422
    assert world.relay.queue == []


def test_an_edited_transfer_audit_record_is_reported(world: World) -> None:
    _started, _message = queued(world)
    world.pump()
    services = world.orgs[GGD]
    with services.db.write() as conn:
        pk = conn.execute(select(audit_event.c.pk).where(
            audit_event.c.org == GGD, audit_event.c.subtype == "transfer")).scalars().first()
        assert pk is not None
        content = conn.execute(select(audit_event.c.content).where(audit_event.c.pk == pk)
                               ).scalar()
        content["outcome"] = "0" if content.get("outcome") != "0" else "4"
        conn.execute(update(audit_event).where(audit_event.c.pk == pk).values(content=content))
    report = audit_log.verify_database(services.db, GGD)
    assert not report.ok
