"""Bulk transfer runs (`ekd.transfer.bulk`, `ekd transfer ...`) through the in-process exchange.

A cohort of demo children at the thuiszorg goes to the GGD: everyone arrives except a child
with an objection (refused) and one with a BSN that fails the 11-test (invalid), and the
report names both. A run interrupted half-way (a dead worker's lease, a child between two
steps) finishes with each child transferred and imported exactly once; children are routed
by postcode through the directory; one child whose step keeps failing is retried later, not
in a hot loop, and never holds up the others.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from ekd.api.app import build_services
from ekd.cli.main import app as cli
from ekd.config import Settings
from ekd.errors import Issue
from ekd.interaction.base import FhirRequest, Services
from ekd.interaction.transaction import process
from ekd.jgz import demo
from ekd.store.database import Database
from ekd.store.resources import as_utc, now
from ekd.store.schema import audit_event, transfer, transfer_inbox
from ekd.transfer import bulk, claims, sender
from tests.transfer_helpers import BASE, GGD, OTHER, THUISZORG, World, build_world, principal

#: Wide enough for every demo child (0-18 years old at the demo's reference date).
EVER = {"born_from": date(1990, 1, 1), "born_to": date(2100, 1, 1)}
#: Demo seed whose child number 1 (of the first 12) recorded an objection to transfer.
OBJECTION_SEED, OBJECTING_CHILD = 16, 1

runner = CliRunner()


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    settings = Settings(database_url=str(database.url), base_url=BASE, jgz_enforce=True,
                        key_dir=str(tmp_path / "keys"))
    return build_world(build_services(settings, database), tmp_path)


# -- helpers -------------------------------------------------------------------------------------


class _Unchecked:
    """A validator that finds nothing, for loading the demo children quickly (validation is
    three quarters of a load). What they hold is the generator's, which test_jgz_demo.py
    validates, and a transfer validates every resource again: a child that did not conform
    would end `invalid` and fail the test that sends it."""

    def validate(self, resource: dict, profiles: object = ()) -> list[Issue]:
        return []


def load(world: World, org: str, count: int, *, seed: int = 7,
         edit: Callable[[int, dict], None] | None = None) -> list[tuple[str, dict]]:
    """Demo children 0..count-1 stored at `org`: (Patient id, Patient as generated) each.
    `edit(index, patient)` may change a child's Patient before it is stored."""
    services = dataclasses.replace(world.orgs[org], validator=_Unchecked(),  # type: ignore[arg-type]
                                   profile_selector=None, checks=())
    process(services, FhirRequest(method="POST", base=BASE, body=demo.shared_bundle(),
                                  principal=principal(org)))
    children = []
    for index, bundle in enumerate(demo.generate(count, seed=seed)):
        patient = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Patient")
        if edit is not None:
            edit(index, patient)
        body = process(services, FhirRequest(method="POST", base=BASE, body=bundle,
                                             principal=principal(org))).body or {}
        location = next(e["response"]["location"] for e in body["entry"]
                        if e["response"].get("location", "").startswith("Patient/"))
        children.append((location.split("/")[1], patient))
    return children


def with_objection(bundle_seed: int, count: int) -> set[int]:
    """Which of the first `count` demo children of a seed recorded an objection."""
    return {i for i, b in enumerate(demo.generate(count, seed=bundle_seed))
            for e in b["entry"] if e["resource"]["resourceType"] == "Consent"
            and e["resource"]["provision"]["type"] == "deny"}


def store_raw(services: Services, org: str, patient_id: str, change: Callable[[dict], None]
              ) -> None:
    """Change a stored Patient without validation: data from before a rule was enforced."""
    with services.db.write() as conn:
        store = services.store(conn, org)
        prev = store.current("Patient", patient_id)
        assert prev is not None and prev.content is not None
        content = dict(prev.content)
        change(content)
        store.update(prev, content)


def start_job(world: World, **criteria: object) -> tuple[str, int]:
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    return bulk.create_job(services, services.exchange, principal=principal(THUISZORG),
                           **{**EVER, **criteria})  # type: ignore[arg-type]


def finish(world: World, job: str, rounds: int = 40) -> dict:
    for _ in range(rounds):
        world.pump()
        report = bulk.report(world.orgs[THUISZORG], THUISZORG, job)
        if report["finished"]:
            return report
    raise AssertionError(f"job {job} did not finish: {report['counts']}")


def job_rows(world: World, job: str) -> dict[str, dict]:
    """The job's transfer rows by patient id."""
    with world.orgs[THUISZORG].db.read() as conn:
        rows = conn.execute(select(transfer).where(transfer.c.job_id == job)).mappings().all()
    return {r["patient_id"]: dict(r) for r in rows}


def received(world: World, org: str) -> list[dict]:
    with world.orgs[org].db.read() as conn:
        return [dict(r) for r in conn.execute(select(transfer_inbox).where(
            transfer_inbox.c.org == org).order_by(transfer_inbox.c.pk)).mappings()]


def prepare(world: World, limit: int = 10) -> int:
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    return bulk.prepare_due(services, services.exchange, limit=limit)


def expire_leases(world: World) -> None:
    """Time passes: every lease on a transfer row runs out (a dead worker's too)."""
    with world.orgs[THUISZORG].db.write() as conn:
        conn.execute(update(transfer).values(claimed_until=now() - timedelta(seconds=1)))


# -- a cohort ------------------------------------------------------------------------------------


def test_a_cohort_arrives_except_an_objection_and_an_invalid_bsn(world: World) -> None:
    assert OBJECTING_CHILD in with_objection(OBJECTION_SEED, 12)
    children = load(world, THUISZORG, 12, seed=OBJECTION_SEED)
    bad_bsn = children[4][0]
    # The JGZ profile refuses this BSN on write today; data from before it is still around.
    store_raw(world.orgs[THUISZORG], THUISZORG, bad_bsn,
              lambda p: p.update(identifier=[{**p["identifier"][0], "value": "999364511"}]))
    job, count = start_job(world, recipient=GGD)
    assert count == 12
    rows = job_rows(world, job)
    assert set(rows) == {pid for pid, _ in children}
    assert {r["state"] for r in rows.values()} == {"prepared"}

    report = finish(world, job)
    objecting = children[OBJECTING_CHILD][0]
    assert report["total"] == 12
    assert report["counts"] == {"pending": 0, "sent": 0, "accepted": 0, "imported": 10,
                                "refused": 1, "invalid": 1, "retrying": 0, "failed": 0}
    attention = {a["patient"]: a for a in report["attention"]}
    assert set(attention) == {f"Patient/{objecting}", f"Patient/{bad_bsn}"}
    refused = attention[f"Patient/{objecting}"]
    assert refused["category"] == "refused" and refused["state"] == "cancelled"
    assert refused["transfer"] == rows[objecting]["id"]
    assert refused["problem"]["code"] == "objection"
    invalid = attention[f"Patient/{bad_bsn}"]
    assert invalid["category"] == "invalid" and invalid["transfer"] == rows[bad_bsn]["id"]
    assert invalid["problem"]["code"] == "invalid-bsn"
    json.dumps(report)  # what `--json-report` writes

    # The GGD has exactly the ten others, each imported once.
    arrived = received(world, GGD)
    assert len(arrived) == 10 and {r["state"] for r in arrived} == {"imported"}
    sent_ids = {rows[pid]["id"] for pid, _ in children if pid not in (objecting, bad_bsn)}
    assert {r["transfer_id"] for r in arrived} == sent_ids

    # The job's creation is audited once, as the user who asked, naming the job.
    with world.orgs[THUISZORG].db.read() as conn:
        events = [e for (e,) in conn.execute(select(audit_event.c.content).where(
            audit_event.c.org == THUISZORG))]
    created = [e for e in events if "transfer-bulk" in {c["code"] for c in e["subtype"]}]
    assert len(created) == 1
    assert any(a.get("who", {}).get("identifier", {}).get("value") == "900011111"
               for a in created[0]["agent"])


def test_an_interrupted_job_finishes_with_each_child_transferred_once(world: World) -> None:
    children = load(world, THUISZORG, 5)
    # A cohort of four by birth date: the youngest child is born after it (bounds inclusive).
    by_birth = sorted(children, key=lambda c: c[1]["birthDate"])
    cohort, youngest = by_birth[:4], by_birth[4]
    assert cohort[-1][1]["birthDate"] < youngest[1]["birthDate"]
    job, count = start_job(world, born_from=date.fromisoformat(cohort[0][1]["birthDate"]),
                           born_to=date.fromisoformat(cohort[-1][1]["birthDate"]),
                           recipient=GGD)
    assert count == 4 and set(job_rows(world, job)) == {pid for pid, _ in cohort}

    # The run is cut short: two children are prepared, one is left between two steps, and a
    # worker that died holds the lease on the last one.
    assert prepare(world, limit=2) == 2
    rows = job_rows(world, job)
    waiting = sorted((r for r in rows.values() if r["state"] == "prepared"),
                     key=lambda r: r["created"])
    assert len(waiting) == 2
    services = world.orgs[THUISZORG]
    assert services.exchange is not None
    with services.db.write() as conn:
        sender.step(services, services.exchange, conn, waiting[0],
                    sender.worker_principal(THUISZORG))
    claimed = claims.claim(services.db, transfer, "id", [transfer.c.id == waiting[1]["id"]],
                           limit=1, order_by="created")
    assert len(claimed) == 1
    # While the dead worker's lease lasts, nobody takes its child.
    world.pump()
    assert job_rows(world, job)[waiting[1]["patient_id"]]["state"] == "prepared"
    assert not bulk.report(services, THUISZORG, job)["finished"]

    expire_leases(world)
    report = finish(world, job)
    assert report["counts"]["imported"] == 4 and report["total"] == 4

    with services.db.read() as conn:
        per_child = dict(conn.execute(select(transfer.c.patient_id, func.count()).where(
            transfer.c.org == THUISZORG).group_by(transfer.c.patient_id)).all())
    assert per_child == {pid: 1 for pid, _ in cohort}
    arrived = received(world, GGD)
    assert sorted(r["transfer_id"] for r in arrived) == sorted(
        r["id"] for r in job_rows(world, job).values())
    assert {r["state"] for r in arrived} == {"imported"}
    # The same cohort asked for again leaves out who is transferred already.
    again, count = start_job(world, born_from=date.fromisoformat(cohort[0][1]["birthDate"]),
                             born_to=date.fromisoformat(cohort[-1][1]["birthDate"]),
                             recipient=GGD)
    assert count == 0
    assert bulk.report(services, THUISZORG, again)["criteria"]["skipped"] == 4


def test_children_are_routed_to_the_ggd_of_their_postcode(world: World) -> None:
    postcodes = ["1234AB", "2345CD", "9876EF"]  # GGD serves 1000-1999, OTHER 2000-2999

    def move(index: int, patient: dict) -> None:
        for address in patient["address"]:
            address["postalCode"] = postcodes[index]

    (to_ggd, _), (to_other, _), (nowhere, _) = load(world, THUISZORG, 3, edit=move)
    nearby, count = start_job(world, postcode_from="1000", postcode_to="2999")
    assert count == 2
    rows = job_rows(world, nearby)
    assert {pid: r["recipient"] for pid, r in rows.items()} == {to_ggd: GGD, to_other: OTHER}
    # Without the postcode filter the third child is in, and no organisation serves it; the
    # two others are on their way already and are left out.
    rest, count = start_job(world)
    assert count == 1
    stopped = job_rows(world, rest)[nowhere]
    assert stopped["state"] == "invalid"
    assert stopped["problems"][0]["code"] == "no-recipient"

    report = finish(world, nearby)
    assert report["counts"]["imported"] == 2
    assert [r["transfer_id"] for r in received(world, GGD)] == [rows[to_ggd]["id"]]
    assert [r["transfer_id"] for r in received(world, OTHER)] == [rows[to_other]["id"]]
    rest_report = bulk.report(world.orgs[THUISZORG], THUISZORG, rest)
    assert rest_report["finished"] and rest_report["counts"]["invalid"] == 1
    assert rest_report["criteria"]["skipped"] == 2
    assert rest_report["attention"][0]["problem"]["code"] == "no-recipient"


def test_a_failing_child_is_retried_later_and_never_stops_the_others(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    (good, _), (broken, _) = load(world, THUISZORG, 2)
    job, _ = start_job(world, recipient=GGD)
    broken_id = job_rows(world, job)[broken]["id"]
    calls = []
    real_step = sender.step

    def step(services: Services, exchange: object, conn: object, row: dict,
             principal_: object) -> dict:
        if row["id"] == broken_id:
            calls.append(row["state"])
            raise RuntimeError("a bug that only this child's data triggers")
        return real_step(services, exchange, conn, row, principal_)  # type: ignore[arg-type]

    monkeypatch.setattr(sender, "step", step)
    assert prepare(world) == 2
    rows = job_rows(world, job)
    assert rows[good]["state"] == "queued"
    assert rows[broken]["state"] == "prepared"
    assert rows[broken]["problems"][0] == {
        "code": "internal-error", "attempts": 1,
        "message": "Preparing the transfer failed (RuntimeError)"}
    # Held back: the next rounds do not touch it (no hot loop).
    assert prepare(world) == 0 and prepare(world) == 0
    assert calls == ["prepared"]
    assert bulk.stalled(world.orgs[THUISZORG], THUISZORG, job) == 1
    # Each retry waits longer; after the last one the child ends invalid, the job finishes.
    expire_leases(world)
    assert prepare(world) == 1
    longer = job_rows(world, job)[broken]
    assert longer["problems"][0]["attempts"] == 2
    assert as_utc(longer["claimed_until"]) - now() > claims.LEASE + timedelta(seconds=30)
    for _ in range(bulk.MAX_STEP_FAILURES - 2):
        expire_leases(world)
        prepare(world)
    final = job_rows(world, job)[broken]
    assert final["state"] == "invalid"
    assert final["problems"][0]["code"] == "internal-error"
    assert len(calls) == bulk.MAX_STEP_FAILURES
    monkeypatch.undo()
    report = finish(world, job)
    assert report["counts"]["imported"] == 1 and report["counts"]["invalid"] == 1


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "says"), [
    ([], "Dossier transfer (overdracht)"), (["send"], "Send one child's dossier"),
    (["status"], "Where transfers stand"), (["bulk"], "--turning-4-from"),
    (["work"], "Run the transfer worker"), (["review"], "wait for a person"),
    (["review", "list"], "waiting for a decision"), (["review", "resolve"], "--merge")])
def test_every_transfer_command_explains_itself(command: list[str], says: str) -> None:
    result = runner.invoke(cli, ["transfer", *command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert says in " ".join(result.output.split())


def env_of(world: World, org: str) -> dict[str, str]:
    """The settings of one organisation of the world, as `ekd` reads them from the
    environment."""
    s = world.orgs[org].settings
    return {"EKD_DATABASE_URL": s.database_url, "EKD_EXCHANGE_CERT": s.exchange_cert,
            "EKD_EXCHANGE_KEY": s.exchange_key, "EKD_EXCHANGE_CHAIN": s.exchange_chain,
            "EKD_EXCHANGE_ROOT": s.exchange_root, "EKD_EXCHANGE_CRL": s.exchange_crl,
            "EKD_EXCHANGE_RELAY": s.exchange_relay,
            "EKD_EXCHANGE_RELAY_URA": s.exchange_relay_ura,
            "EKD_EXCHANGE_DIRECTORY": s.exchange_directory, "EKD_JGZ_ENFORCE": "true"}


def test_status_shows_a_job_and_a_transfer_as_json(world: World) -> None:
    (child, _), (invalid, _) = load(world, THUISZORG, 2)
    store_raw(world.orgs[THUISZORG], THUISZORG, invalid,
              lambda p: p.update(identifier=[{**p["identifier"][0], "value": "123456789"}]))
    job, _ = start_job(world, recipient=GGD)
    finish(world, job)
    env = env_of(world, THUISZORG)
    result = runner.invoke(cli, ["transfer", "status", "--job", job, "--json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown == json.loads(json.dumps(bulk.report(world.orgs[THUISZORG], THUISZORG, job)))
    assert shown["counts"]["imported"] == 1 and shown["counts"]["invalid"] == 1
    transfer_id = job_rows(world, job)[child]["id"]
    one = runner.invoke(cli, ["transfer", "status", transfer_id, "--json"], env=env)
    assert one.exit_code == 0, one.output
    assert json.loads(one.stdout)["state"] == "imported"
    table = runner.invoke(cli, ["transfer", "status", "--job", job], env={**env,
                                                                          "COLUMNS": "200"})
    assert table.exit_code == 0 and "invalid-bsn" in table.stdout
    # Another organisation's server does not see this organisation's job.
    other = runner.invoke(cli, ["transfer", "status", "--job", job, "--json"],
                          env=env_of(world, GGD))
    assert other.exit_code == 1


def test_bulk_command_runs_a_cohort_and_writes_the_report(world: World,
                                                          tmp_path: Path) -> None:
    def nowhere(index: int, patient: dict) -> None:
        for address in patient["address"]:
            address["postalCode"] = "9876EF"  # no GGD in the directory serves it

    ((child, patient),) = load(world, THUISZORG, 1, edit=nowhere)
    born = date.fromisoformat(patient["birthDate"])
    fourth = born.replace(year=born.year + 4)  # the day the child turns 4
    out = tmp_path / "report.json"
    result = runner.invoke(cli, [
        "transfer", "bulk", "--turning-4-from", fourth.isoformat(), "--turning-4-to",
        fourth.isoformat(), "--json-report", str(out), "--receipt-wait", "0"],
        env={**env_of(world, THUISZORG), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["total"] == 1 and report["counts"]["invalid"] == 1
    assert report["attention"][0]["patient"] == f"Patient/{child}"
    assert report["criteria"]["born_from"] == born.isoformat()
    # A job is resumed by id; one that does not exist is refused.
    again = runner.invoke(cli, ["transfer", "bulk", "--resume", report["job"],
                                "--receipt-wait", "0"], env=env_of(world, THUISZORG))
    assert again.exit_code == 0, again.output
    missing = runner.invoke(cli, ["transfer", "bulk", "--resume", "no-such-job"],
                            env=env_of(world, THUISZORG))
    assert missing.exit_code == 1


def test_send_and_review_resolve_from_the_command_line(world: World) -> None:
    """`send` queues one child; the GGD knows the BSN with another birth date, so the dossier
    waits for review there, and `review resolve --merge` imports it into that child."""
    ((child, patient),) = load(world, THUISZORG, 1)

    def older(index: int, p: dict) -> None:
        p["identifier"] = patient["identifier"]
        p["birthDate"] = (date.fromisoformat(patient["birthDate"]) - timedelta(days=1)
                          ).isoformat()

    ((known, _),) = load(world, GGD, 1, seed=8, edit=older)
    sender_env = {**env_of(world, THUISZORG), "COLUMNS": "200"}
    unknown = runner.invoke(cli, ["transfer", "send", "nobody", "--to", GGD], env=sender_env)
    assert unknown.exit_code == 1
    sent = runner.invoke(cli, ["transfer", "send", f"Patient/{child}", "--to", GGD],
                         env=sender_env)
    assert sent.exit_code == 0, sent.output
    words = sent.stdout.split()
    transfer_id = words[words.index("Transfer") + 1]
    assert f"Patient/{child} to {GGD}: queued" in sent.stdout
    for _ in range(10):
        world.pump()
    held = received(world, GGD)
    assert [(r["transfer_id"], r["state"]) for r in held] == [(transfer_id, "review")]
    env = env_of(world, GGD)
    listed = runner.invoke(cli, ["transfer", "review", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [r["pk"] for r in json.loads(listed.stdout)] == [held[0]["pk"]]
    both = runner.invoke(cli, ["transfer", "review", "resolve", str(held[0]["pk"]), "--new",
                               "--merge", known], env=env)
    assert both.exit_code == 2
    done = runner.invoke(cli, ["transfer", "review", "resolve", str(held[0]["pk"]),
                               "--merge", known], env=env)
    assert done.exit_code == 0, done.output
    assert [(r["state"], r["patient_id"]) for r in received(world, GGD)] == [
        ("imported", known)]
    # The application receipt reaches the sender.
    world.pump()
    shown = runner.invoke(cli, ["transfer", "status", transfer_id, "--json"], env=sender_env)
    assert json.loads(shown.stdout)["state"] == "imported"
