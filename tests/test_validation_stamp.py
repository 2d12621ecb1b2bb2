"""The validation stamp (`ekd.validation.stamp`): what a version was validated under, so that
dossier transfer validates again only what may have changed its outcome."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from ekd.api.app import build_services
from ekd.config import Settings
from ekd.interaction import write
from ekd.interaction.base import FhirRequest, Services
from ekd.interaction.route import handle
from ekd.store.database import Database
from ekd.store.schema import resource_version
from ekd.transfer import sender
from tests.transfer_helpers import BASE, GGD, THUISZORG, make_world, principal

REPO = Path(__file__).resolve().parents[1]
VALUE_SET = {"resourceType": "ValueSet", "url": "http://example.org/ValueSet/stamp-test",
             "status": "active", "compose": {"include": [{"system": "http://example.org/cs"}]}}


def test_the_stamp_is_the_same_in_another_process(services: Services, settings: Settings
                                                  ) -> None:
    """Hashes of contents, never of identities or load order: a stamp written by one server
    process is recognised by the next."""
    script = (
        "from ekd.api.app import build_services; from ekd.config import Settings; "
        f"s = Settings(database_url={settings.database_url!r}, jgz_enforce=False, "
        f"key_dir={settings.key_dir!r}); print(build_services(s).validation_stamp())")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()[-1]
    assert services.validation_stamp is not None
    assert out == services.validation_stamp()


def test_the_stamp_follows_settings_and_definitions(database: Database, settings: Settings
                                                    ) -> None:
    plain = build_services(settings, database)
    assert plain.validation_stamp is not None
    first = plain.validation_stamp()
    assert len(first) == 32
    jgz = build_services(dataclasses.replace(settings, jgz_enforce=True), database)
    assert jgz.validation_stamp is not None and jgz.validation_stamp() != first
    required = build_services(dataclasses.replace(
        settings, required_profiles={"Patient": ("http://example.org/p",)}), database)
    assert required.validation_stamp is not None and required.validation_stamp() != first
    plain.definitions.add(VALUE_SET)
    changed = plain.validation_stamp()
    assert changed != first
    plain.definitions.add({**VALUE_SET, "compose": {"include": [{"system": "http://x.org"}]}})
    assert plain.validation_stamp() not in (first, changed)
    plain.definitions.remove(plain.definitions.get(VALUE_SET["url"]) or {})
    assert plain.validation_stamp() == first


def _stamps(database: Database, rtype: str) -> list[str | None]:
    with database.read() as conn:
        return list(conn.execute(select(resource_version.c.validated).where(
            resource_version.c.type == rtype).order_by(resource_version.c.seq)).scalars())


def test_every_validated_write_keeps_the_stamp(services: Services, database: Database) -> None:
    assert services.validation_stamp is not None
    stamp = services.validation_stamp()
    created = handle(services, FhirRequest(method="POST", base=BASE, type="Patient", body={
        "resourceType": "Patient", "gender": "female"}))
    assert created.status == 201
    pid = (created.body or {})["id"]
    assert handle(services, FhirRequest(method="PUT", base=BASE, type="Patient", id=pid, body={
        "resourceType": "Patient", "id": pid, "gender": "male"})).status == 200
    assert handle(services, FhirRequest(method="PATCH", base=BASE, type="Patient", id=pid,
                                        patch=[{"op": "replace", "path": "/gender",
                                                "value": "other"}])).status == 200
    assert handle(services, FhirRequest(method="DELETE", base=BASE, type="Patient", id=pid)
                  ).status in (200, 204)
    assert _stamps(database, "Patient") == [stamp, stamp, stamp, None]


def test_a_definition_changing_during_validation_leaves_the_version_unstamped(
        services: Services, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    original = write.validation_issues

    def changing(svc: Services, resource: dict) -> list:
        svc.definitions.add(VALUE_SET)  # another request changed a definition meanwhile
        return original(svc, resource)

    monkeypatch.setattr(write, "validation_issues", changing)
    assert handle(services, FhirRequest(method="POST", base=BASE, type="Patient", body={
        "resourceType": "Patient"})).status == 201
    assert _stamps(database, "Patient") == [None]


def _validated_at_send(world_services: Services, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    original = sender.validation_issues

    def counting(svc: Services, resource: dict) -> list:
        seen.append(f"{resource.get('resourceType')}/{resource.get('id')}")
        return original(svc, resource)

    monkeypatch.setattr(sender, "validation_issues", counting)
    return seen


def test_sending_validates_only_what_was_not_validated_under_the_current_stamp(
        database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(str(database.url), tmp_path)
    sending = world.orgs[THUISZORG]
    world.load_child(THUISZORG, 0)
    world.load_child(THUISZORG, 1)
    patients = [s for s in handle(sending, FhirRequest(
        method="GET", base=BASE, type="Patient", principal=principal(THUISZORG)
    )).body["entry"]]  # type: ignore[index]
    first, second = (p["resource"]["id"] for p in patients[:2])
    seen = _validated_at_send(sending, monkeypatch)

    def send(patient_id: str) -> str:
        resp = handle(sending, FhirRequest(
            method="POST", base=BASE, type="Patient", id=patient_id, operation="transfer",
            principal=principal(THUISZORG), body={"resourceType": "Parameters", "parameter": [
                {"name": "recipient", "valueString": GGD}]}))
        assert resp.status == 202, resp.body
        return str(resp.body)

    send(first)
    assert seen == []  # every version was validated when it was written, under this stamp
    # A definition changes: the same dossier kind is validated in full before it leaves.
    sending.definitions.add(VALUE_SET)
    send(second)
    assert len(seen) > 20 and any(s.startswith("Patient/") for s in seen)
    world.pump()


def test_a_version_stored_without_validation_is_validated_before_it_leaves(
        database: Database, tmp_path: Path) -> None:
    """No stamp, no shortcut: an Observation that reached the store some other way (here
    directly, without its required status) stops the transfer, named."""
    world = make_world(str(database.url), tmp_path)
    sending = world.orgs[THUISZORG]
    world.load_child(THUISZORG, 0)
    child = handle(sending, FhirRequest(method="GET", base=BASE, type="Patient",
                                        principal=principal(THUISZORG))).body
    patient_id = child["entry"][0]["resource"]["id"]  # type: ignore[index]
    with sending.db.write() as conn:
        sending.store(conn, THUISZORG).create("Observation", "unchecked", {
            "resourceType": "Observation", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient_id}"}})
    resp = handle(sending, FhirRequest(
        method="POST", base=BASE, type="Patient", id=patient_id, operation="transfer",
        principal=principal(THUISZORG), body={"resourceType": "Parameters", "parameter": [
            {"name": "recipient", "valueString": GGD}]}))
    assert resp.status == 422
    outcome = next(p["resource"] for p in (resp.body or {})["parameter"]
                   if p["name"] == "outcome")
    assert any("Observation/unchecked" in " ".join(i.get("expression", ()))
               for i in outcome["issue"]), outcome
