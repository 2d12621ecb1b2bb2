"""The audit log (NEN 7513): hash chains, tamper detection, concurrency, AuditEvent search,
and the `ekd audit` commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import rfc8785
from sqlalchemy import delete, select, update
from test_validator__kit import errors, validator
from typer.testing import CliRunner

from ekd.audit import log
from ekd.audit.event import for_fhir, to_audit_event
from ekd.audit.record import AuditRecord, PatientRef
from ekd.audit.search import AuditSearch
from ekd.cli.audit import app as audit_cli
from ekd.errors import InvalidRequest
from ekd.security.principal import Principal, Role
from ekd.store.database import Database
from ekd.store.schema import audit_event, audit_head, audit_patient

A, B = "90000100", "90000200"
BSN = "999911120"
BSN_QUERY = f"identifier=http://fhir.nl/fhir/NamingSystem/bsn|{BSN}"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BASE = "http://testserver/fhir"


def principal(org: str = A, user: str | None = "900012345", role: Role = Role.JEUGDARTS,
              **kw: object) -> Principal:
    return Principal(org=org, client_id="dossier-app", role=role, scopes=(), user_id=user,
                     user_name=None if user is None else f"Dr. {user}", source="10.0.0.7",
                     token_id="jti-1", **kw)  # type: ignore[arg-type]


def record(i: int = 0, *, org: str = A, user: str | None = "900012345",
           action: str = "R", interaction: str = "read", status: int = 200,
           patient: str | None = "Patient/p1", bsn: str | None = BSN,
           entities: tuple[str, ...] = (), query: str | None = None,
           role: Role = Role.JEUGDARTS, minutes: int | None = None, **kw: object
           ) -> AuditRecord:
    patients = () if patient is None else (PatientRef(patient, bsn),)
    return AuditRecord(
        interaction=interaction, action=action, status=status,
        principal=principal(org, user, role, **kw), resource_type="Patient",
        recorded=T0 + timedelta(minutes=i if minutes is None else minutes),
        entities=entities or ((patient + "/_history/1",) if patient else ()),
        patients=patients, query=query)


def append(db: Database, records: list[AuditRecord]) -> list[str]:
    with db.write() as conn:
        return log.append(conn, records)


def verify(db: Database, org: str | None = None) -> log.VerifyReport:
    return log.verify_database(db, org)


def rows(db: Database, org: str = A) -> list:
    with db.read() as conn:
        return conn.execute(select(audit_event).where(audit_event.c.org == org)
                            .order_by(audit_event.c.pk)).all()


def tamper(db: Database, *statements: object) -> None:
    with db.write() as conn:
        for stmt in statements:
            conn.execute(stmt)  # type: ignore[call-overload]


def only_problem(report: log.VerifyReport, org: str = A) -> log.Problem:
    r = report.orgs[org]
    assert r.problem_count == 1, r.problems
    assert r.first is not None
    return r.first


@pytest.fixture
def chain(database: Database) -> list:
    """Five records of org A (two in one batch), one of org B."""
    append(database, [record(0)])
    append(database, [record(1, patient="Patient/p2", bsn="999911132"), record(2)])
    append(database, [record(3), record(4, patient=None)])
    append(database, [record(5, org=B)])
    return rows(database)


# -- append and verify -----------------------------------------------------------------------


def test_append_links_records_and_verify_passes(database: Database, chain: list) -> None:
    assert [r.prev_hash for r in chain[1:]] == [r.hash for r in chain[:-1]]
    assert chain[0].prev_hash == log.GENESIS
    report = verify(database)
    assert report.ok and report.checked == 6
    assert report.orgs[A].checked == 5 and report.orgs[B].checked == 1
    assert report.orgs[A].head_hash == chain[-1].hash
    with database.read() as conn:
        head = conn.execute(select(audit_head).where(audit_head.c.org == A)).one()
    assert (head.last_pk, head.hash) == (chain[-1].pk, chain[-1].hash)


def test_append_returns_ids_in_order_across_orgs(database: Database) -> None:
    ids = append(database, [record(0, org=B), record(1), record(2, org=B)])
    with database.read() as conn:
        got = dict(conn.execute(select(audit_event.c.id, audit_event.c.org)).all())
    assert [got[i] for i in ids] == [B, A, B]
    assert verify(database).ok


def test_hash_is_sha256_over_rfc8785_json_a_third_party_can_recompute(
        database: Database, chain: list) -> None:
    with database.read() as conn:
        pats = conn.execute(select(audit_patient)).all()
    for row in chain:
        mine = sorted(({"org": p.org, "patient": p.patient, "bsn": p.bsn}
                       for p in pats if p.audit_pk == row.pk),
                      key=lambda x: (x["patient"], x["bsn"] or ""))
        digest = hashlib.sha256(row.prev_hash.encode() + rfc8785.dumps(row.content)
                                + rfc8785.dumps(mine)).hexdigest()
        assert digest == row.hash


@pytest.mark.parametrize("value", [
    "plain", "é ü ß", "\x00\x01\x1f\x7f\b\t\n\f\r", '"\\/', "\u2028\u2029", "😀 \U0010ffff",
    "\ufeff\ue000", {"b": 1, "a": [True, False, None, -(2**53) + 1]}, 2**53 - 1, 1.5, 1e21,
    {"é": 1, "z": 2, "😀": 3, "\ue000": 4},
])
def test_canonical_json_is_rfc8785(value: object) -> None:
    doc = {"x": value, "list": [value]}
    assert log.canonical(doc) == rfc8785.dumps(doc)


# -- tamper detection ------------------------------------------------------------------------


def test_edited_content_is_reported_at_that_record(database: Database, chain: list) -> None:
    edited = dict(chain[2].content, action="C")
    tamper(database, update(audit_event).where(audit_event.c.pk == chain[2].pk)
           .values(content=edited))
    p = only_problem(verify(database))
    assert (p.kind, p.pk, p.id) == (log.ALTERED, chain[2].pk, chain[2].id)
    assert verify(database).orgs[B].ok


def test_edited_bsn_is_reported(database: Database, chain: list) -> None:
    tamper(database, update(audit_patient).where(audit_patient.c.audit_pk == chain[1].pk)
           .values(bsn="999911144"))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.ALTERED, chain[1].pk)
    assert BSN not in p.detail and "999911144" not in p.detail


def test_removed_patient_row_is_reported(database: Database, chain: list) -> None:
    tamper(database, delete(audit_patient).where(audit_patient.c.audit_pk == chain[3].pk))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.PATIENTS, chain[3].pk)


def test_edited_column_is_reported(database: Database, chain: list) -> None:
    tamper(database, update(audit_event).where(audit_event.c.pk == chain[0].pk)
           .values(user_id="someone-else"))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.COLUMNS, chain[0].pk)
    assert "user_id" in p.detail


def _remove(pk: int) -> list:
    return [delete(audit_patient).where(audit_patient.c.audit_pk == pk),
            delete(audit_event).where(audit_event.c.pk == pk)]


def test_deleted_middle_record_is_a_gap(database: Database, chain: list) -> None:
    tamper(database, *_remove(chain[2].pk))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.GAP, chain[3].pk)


def test_deleted_first_record_is_a_gap(database: Database, chain: list) -> None:
    tamper(database, *_remove(chain[0].pk))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.GAP, chain[1].pk)


def test_deleted_last_record_is_a_head_mismatch(database: Database, chain: list) -> None:
    tamper(database, *_remove(chain[-1].pk))
    p = only_problem(verify(database))
    assert p.kind == log.HEAD and p.pk is None
    assert str(chain[-1].pk) in p.detail


def test_all_records_deleted_is_a_head_mismatch(database: Database, chain: list) -> None:
    tamper(database, *[s for r in chain for s in _remove(r.pk)])
    assert only_problem(verify(database)).kind == log.HEAD


def test_deleted_head_row_is_reported(database: Database, chain: list) -> None:
    tamper(database, delete(audit_head).where(audit_head.c.org == A))
    assert only_problem(verify(database)).kind == log.HEAD


def test_reordered_records_are_reported(database: Database, chain: list) -> None:
    """Two records swap places: every column and their patient rows move along."""
    one, two = chain[1], chain[2]
    cols = ("recorded", "content", "prev_hash", "hash")
    with database.write() as conn:
        pats = {r.pk: conn.execute(select(audit_patient.c.org, audit_patient.c.patient,
                                          audit_patient.c.bsn)
                                   .where(audit_patient.c.audit_pk == r.pk)).all()
                for r in (one, two)}
        conn.execute(delete(audit_patient).where(audit_patient.c.audit_pk.in_(list(pats))))
        conn.execute(update(audit_event).where(audit_event.c.pk == one.pk).values(id="tmp"))
        conn.execute(update(audit_event).where(audit_event.c.pk == two.pk)
                     .values(id=one.id, **{c: getattr(one, c) for c in cols}))
        conn.execute(update(audit_event).where(audit_event.c.pk == one.pk)
                     .values(id=two.id, **{c: getattr(two, c) for c in cols}))
        moved = [(two.pk, p) for p in pats[one.pk]] + [(one.pk, p) for p in pats[two.pk]]
        conn.execute(audit_patient.insert(), [
            {"audit_pk": pk, "org": p.org, "patient": p.patient, "bsn": p.bsn}
            for pk, p in moved])
    report = verify(database)
    assert not report.ok
    assert {p.kind for p in report.orgs[A].problems} == {log.GAP}
    assert report.orgs[A].problems[0].pk == one.pk


def test_relinked_chain_around_a_removed_record_is_reported(database: Database,
                                                            chain: list) -> None:
    """Remove record 2 and re-hash record 3 onto record 1: record 4 no longer follows."""
    gone, moved = chain[2], chain[3]
    with database.read() as conn:
        pats = [{"org": p.org, "patient": p.patient, "bsn": p.bsn} for p in conn.execute(
            select(audit_patient).where(audit_patient.c.audit_pk == moved.pk))]
    relinked = log.chain_hash(chain[1].hash, moved.content, log.patient_rows(
        A, ((p["patient"], p["bsn"]) for p in pats)))
    tamper(database, *_remove(gone.pk),
           update(audit_event).where(audit_event.c.pk == moved.pk)
           .values(prev_hash=chain[1].hash, hash=relinked))
    p = only_problem(verify(database))
    assert (p.kind, p.pk) == (log.GAP, chain[4].pk)


def test_chains_of_organisations_are_independent(database: Database, chain: list) -> None:
    append(database, [record(10, org=B), record(11, org=B)])
    tamper(database, update(audit_patient).where(audit_patient.c.audit_pk == chain[0].pk)
           .values(bsn="999911156"))
    report = verify(database)
    assert not report.orgs[A].ok
    assert report.orgs[B].ok and report.orgs[B].checked == 3
    assert verify(database, B).ok and list(verify(database, B).orgs) == [B]
    assert not verify(database, A).ok


def test_verify_streams_in_batches(database: Database) -> None:
    append(database, [record(i) for i in range(25)])
    seen: list[int] = []
    with database.read() as conn:
        report = log.verify(conn, batch=7, progress=seen.append)
    assert report.ok and report.checked == 25
    assert seen == [7, 14, 21, 25]
    target = rows(database)[15]
    tamper(database, update(audit_event).where(audit_event.c.pk == target.pk)
           .values(content=dict(target.content, outcome="4")))
    with database.read() as conn:
        report = log.verify(conn, batch=7)
    assert only_problem(report).pk == target.pk


def test_concurrent_appends_keep_one_linear_chain(database: Database) -> None:
    threads, per_thread = 6, 15
    failures: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                batch = [record(i, user=f"u{n}")] * (1 + (i % 3))
                for attempt in range(20):
                    try:
                        append(database, list(batch))
                        break
                    except Exception as exc:  # SQLite: lock timeout under load, retried
                        if "locked" not in str(exc) or attempt == 19:
                            raise
                        time.sleep(0.05)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures[0]
    expected = threads * sum(1 + (i % 3) for i in range(per_thread))
    report = verify(database)
    assert report.ok, report.orgs[A].problems
    assert report.checked == expected
    got = rows(database)
    assert [r.prev_hash for r in got[1:]] == [r.hash for r in got[:-1]]


# -- the AuditEvent --------------------------------------------------------------------------


def test_audit_event_is_valid_r4_and_has_balp_shape() -> None:
    rec = record(0, query=BSN_QUERY, interaction="search-type", action="E",
                 on_behalf_of="900099999", on_behalf_of_name="Dr. Boss")
    event = to_audit_event(rec, "abc")
    assert not errors(validator().validate(event)), errors(validator().validate(event))
    assert not errors(validator().validate(for_fhir(event)))
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0] == {"system": "http://hl7.org/fhir/restful-interaction",
                                   "code": "search-type", "display": "search-type"}
    user, behalf, client, server, org = event["agent"]
    assert user["requestor"] is True and user["who"]["identifier"]["value"] == "900012345"
    assert user["role"][0]["coding"][0]["code"] == "jeugdarts"
    assert behalf["who"]["identifier"]["value"] == "900099999"
    assert behalf["requestor"] is False
    assert client["type"]["coding"][0]["code"] == "110153"
    assert client["network"] == {"address": "10.0.0.7", "type": "2"}
    assert server["type"]["coding"][0]["code"] == "110152"
    assert org["who"]["identifier"]["value"] == A
    assert event["source"]["observer"]["identifier"] == {
        "system": "http://fhir.nl/fhir/NamingSystem/ura", "value": A}
    roles = [e["role"]["code"] for e in event["entity"]]
    assert roles == ["1", "4", "24"]
    assert event["entity"][0]["what"] == {"reference": "Patient/p1"}
    assert base64.b64decode(event["entity"][2]["query"]).decode() == BSN_QUERY
    assert BSN not in json.dumps(for_fhir(event))
    assert "query" not in for_fhir(event)["entity"][2]
    assert "query" in event["entity"][2]  # for_fhir does not touch the stored event


@pytest.mark.parametrize(("status", "outcome"), [(200, "0"), (201, "0"), (404, "4"),
                                                 (403, "4"), (500, "8")])
def test_outcome_follows_http_status(status: int, outcome: str) -> None:
    event = to_audit_event(record(0, status=status), "x")
    assert event["outcome"] == outcome
    assert ("outcomeDesc" in event) == (status >= 400)


def test_machine_client_is_the_requestor() -> None:
    event = to_audit_event(record(0, user=None, role=Role.SYSTEM), "x")
    assert len(event["agent"]) == 3
    client = event["agent"][0]
    assert client["requestor"] is True and client["role"][0]["coding"][0]["code"] == "system"


# -- search ----------------------------------------------------------------------------------


@pytest.fixture
def log_a(database: Database) -> dict[str, str]:
    """Org A: reads and writes by two users on two patients over three days; org B one read."""
    recs = {
        "read_p1_day1": record(0, user="u1"),
        "update_p1_day1": record(60, user="u2", action="U", interaction="update",
                                 entities=("Observation/o1/_history/2",),
                                 role=Role.JEUGDVERPLEEGKUNDIGE),
        "read_p2_day2": record(24 * 60, user="u1", patient="Patient/p2", bsn="999911132"),
        "search_p1_day2": record(24 * 60 + 5, user="u2", action="E",
                                 interaction="search-type", query=BSN_QUERY,
                                 role=Role.JEUGDVERPLEEGKUNDIGE),
        "failed_read_p1_day3": record(48 * 60, user="u3", status=403,
                                      role=Role.DOKTERSASSISTENT),
        "create_obs_day3": record(48 * 60 + 1, user="u1", action="C", interaction="create",
                                  patient="Patient/p2", bsn=None,
                                  entities=("Observation/o9/_history/1",)),
    }
    ids = append(database, list(recs.values()))
    append(database, [record(0, org=B, user="u1")])
    return dict(zip(recs, ids, strict=True))


def search(db: Database, params: list[tuple[str, str]], org: str = A, count: int = 50
           ) -> dict:
    with db.read() as conn:
        return AuditSearch().search(conn, org, params, BASE, count, 100)


def found(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def names(log_a: dict[str, str], bundle: dict) -> list[str]:
    by_id = {v: k for k, v in log_a.items()}
    return [by_id[i] for i in found(bundle)]


def test_search_by_patient_newest_first(database: Database, log_a: dict[str, str]) -> None:
    assert names(log_a, search(database, [("patient", "Patient/p1")])) == [
        "failed_read_p1_day3", "search_p1_day2", "update_p1_day1", "read_p1_day1"]
    assert names(log_a, search(database, [("patient", "p2")])) == [
        "create_obs_day3", "read_p2_day2"]
    assert len(found(search(database, [("patient", "p1,p2")]))) == 6
    assert found(search(database, [("patient", "Patient/none")])) == []


def test_patient_access_overview_is_one_query_with_role_and_name(
        database: Database, log_a: dict[str, str]) -> None:
    bundle = search(database, [("patient", "Patient/p1"), ("action", "R")])
    assert names(log_a, bundle) == ["failed_read_p1_day3", "read_p1_day1"]
    users = []
    for entry in bundle["entry"]:
        user = next(a for a in entry["resource"]["agent"] if a["requestor"])
        users.append((user["who"]["identifier"]["value"], user["name"],
                      user["role"][0]["coding"][0]["code"]))
    assert users == [("u3", "Dr. u3", "doktersassistent"), ("u1", "Dr. u1", "jeugdarts")]
    with database.read() as conn:
        overview = AuditSearch().access_overview(conn, "Patient/p1", A)
    assert [(a.user_id, a.role, a.action) for a in overview][:2] == [
        ("u3", "doktersassistent", "R"), ("u2", "jeugdverpleegkundige", "E")]


@pytest.mark.parametrize(("params", "expected"), [
    ([("date", "2026-03-01")], {"read_p1_day1", "update_p1_day1"}),
    ([("date", "eq2026-03-02")], {"read_p2_day2", "search_p1_day2"}),
    ([("date", "ge2026-03-02")],
     {"read_p2_day2", "search_p1_day2", "failed_read_p1_day3", "create_obs_day3"}),
    ([("date", "gt2026-03-02")], {"failed_read_p1_day3", "create_obs_day3"}),
    ([("date", "lt2026-03-02")], {"read_p1_day1", "update_p1_day1"}),
    ([("date", "le2026-03-02")],
     {"read_p1_day1", "update_p1_day1", "read_p2_day2", "search_p1_day2"}),
    ([("date", "ge2026-03-01T10:00:00Z"), ("date", "lt2026-03-02T09:05:00Z")],
     {"update_p1_day1", "read_p2_day2"}),
    ([("date", "2026-03-01T09:00:00Z,2026-03-03T09:01")], {"read_p1_day1", "create_obs_day3"}),
    ([("date", "ge2026-03-01T10:00:00+01:00"), ("date", "le2026-03-01T10:00:00+01:00")],
     {"read_p1_day1"}),
    ([("agent", "u1")], {"read_p1_day1", "read_p2_day2", "create_obs_day3"}),
    ([("agent", "u2,u3")], {"update_p1_day1", "search_p1_day2", "failed_read_p1_day3"}),
    ([("action", "C,U")], {"update_p1_day1", "create_obs_day3"}),
    ([("subtype", "search-type")], {"search_p1_day2"}),
    ([("subtype", "http://hl7.org/fhir/restful-interaction|create")], {"create_obs_day3"}),
    ([("subtype", "http://other|create")], set()),
    ([("outcome", "4")], {"failed_read_p1_day3"}),
    ([("entity", "Observation/o1")], {"update_p1_day1"}),
    ([("entity", "Observation/o1/_history/2")], {"update_p1_day1"}),
    ([("entity", "Observation/o1/_history/1")], set()),
    ([("entity", "Observation/o9,Observation/o1")], {"update_p1_day1", "create_obs_day3"}),
    ([("entity", "Patient/p2")], {"read_p2_day2", "create_obs_day3"}),
    ([("agent", "u1"), ("action", "R"), ("patient", "Patient/p1")], {"read_p1_day1"}),
])
def test_search_parameters(database: Database, log_a: dict[str, str],
                           params: list[tuple[str, str]], expected: set[str]) -> None:
    assert set(names(log_a, search(database, params))) == expected


def test_search_by_id(database: Database, log_a: dict[str, str]) -> None:
    assert found(search(database, [("_id", log_a["read_p2_day2"])])) == [log_a["read_p2_day2"]]


def test_paging_with_cursor_sees_every_record_once(database: Database) -> None:
    # Some records share a recorded time: the pk breaks the tie.
    ids = append(database, [record(i, minutes=i // 3) for i in range(23)])
    seen: list[str] = []
    params: list[tuple[str, str]] = [("_count", "4")]
    pages = 0
    while True:
        bundle = search(database, params)
        pages += 1
        seen += found(bundle)
        append(database, [record(100 + pages)])  # the log grows while one pages
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        params = parse_qsl(urlsplit(nxt[0]).query)
        assert ("_count", "4") in params
    assert pages == 6
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    recorded = {r.id: r.recorded for r in rows(database)}
    assert [recorded[i] for i in seen] == sorted((recorded[i] for i in seen), reverse=True)


def test_count_zero_gives_the_total(database: Database, log_a: dict[str, str]) -> None:
    bundle = search(database, [("patient", "Patient/p1"), ("_count", "0")])
    assert bundle["total"] == 4 and "entry" not in bundle


def test_organisations_never_see_each_others_records(database: Database,
                                                     log_a: dict[str, str]) -> None:
    b = found(search(database, [], org=B))
    assert len(b) == 1 and not set(b) & set(log_a.values())
    assert found(search(database, [("patient", "Patient/p1")], org=B)) == b
    assert found(search(database, [("_id", log_a["read_p1_day1"])], org=B)) == []
    with database.read() as conn:
        assert AuditSearch().read(conn, B, log_a["read_p1_day1"]) is None
        assert AuditSearch().read(conn, A, log_a["read_p1_day1"]) is not None
        assert AuditSearch().access_overview(conn, "Patient/p1", B)[0].org == B


@pytest.mark.parametrize(("params", "name"), [
    ([("address", "x")], "address"),
    ([("patient:missing", "true")], "patient:missing"),
    ([("action", "X")], "action"),
    ([("outcome", "1")], "outcome"),
    ([("date", "yesterday")], "date"),
    ([("date", "ap2026")], "date"),
    ([("patient", "Observation/1")], "patient"),
    ([("_sort", "date")], "_sort"),
    ([("_cursor", "nonsense!")], "_cursor"),
    ([("_count", "-1")], "_count"),
    ([("agent", "")], "agent"),
])
def test_bad_parameters_are_rejected_naming_them(database: Database,
                                                 params: list[tuple[str, str]],
                                                 name: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        search(database, params)
    assert exc.value.issues[0].expression == (name,)


def test_bsn_never_appears_in_returned_audit_events(database: Database,
                                                    log_a: dict[str, str]) -> None:
    encoded = base64.b64encode(BSN_QUERY.encode()).decode()
    with database.read() as conn:
        stored = conn.execute(select(audit_event.c.content)
                              .where(audit_event.c.id == log_a["search_p1_day2"])).scalar_one()
        read = AuditSearch().read(conn, A, log_a["search_p1_day2"])
    assert encoded in orjson.dumps(stored).decode()  # kept in the protected store
    texts = [orjson.dumps(read).decode()]
    for params in ([], [("patient", "p1")], [("entity", "Patient/p1")], [("action", "E")]):
        texts.append(orjson.dumps(search(database, params)).decode())
    assert len(found(search(database, []))) == 6
    for t in texts:
        assert BSN not in t and "999911132" not in t and encoded not in t
    assert "masked" in texts[0]


# -- the command line ------------------------------------------------------------------------


def cli(database: Database, *args: str) -> tuple[int, str]:
    url = database.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(audit_cli, [*args, "--database-url", url],
                                env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_cli_verify_exit_codes(database: Database, chain: list) -> None:
    code, out = cli(database, "verify")
    assert code == 0, out
    assert "All audit chains intact" in out and A in out and chain[-1].hash in out
    code, out = cli(database, "verify", "--org", B)
    assert code == 0 and A not in out
    tamper(database, update(audit_patient).where(audit_patient.c.audit_pk == chain[1].pk)
           .values(bsn="999911168"))
    code, out = cli(database, "verify")
    assert code == 1, out
    assert f"record pk {chain[1].pk}" in out and log.ALTERED in out
    assert "999911168" not in out and BSN not in out
    assert cli(database, "verify", "--org", B)[0] == 0


def test_cli_verify_reports_a_deleted_tail(database: Database, chain: list) -> None:
    tamper(database, *_remove(chain[-1].pk))
    code, out = cli(database, "verify")
    assert code == 1 and "newest records are missing" in out


def test_cli_show_lists_access_without_bsn(database: Database, log_a: dict[str, str]) -> None:
    code, out = cli(database, "show", "--patient", "Patient/p1", "--org", A)
    assert code == 0, out
    assert "Dr. u3" in out and "doktersassistent" in out and "jeugdverpleegkundige" in out
    assert BSN not in out
    code, out = cli(database, "show", "--patient", "Patient/unknown")
    assert code == 0 and "No audit records" in out
    code, out = cli(database, "show", "--patient", "Observation/1")
    assert code == 2
