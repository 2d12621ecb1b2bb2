"""Audit completeness (NEN 7513): a scripted session of 100 mixed requests yields exactly the
expected audit records, and `ekd audit verify` reports a tampered or removed record.

The expectation is written out here, request by request, independently of the code that
builds the records: one record per interaction; a transaction or batch yields one per entry
(no record for the Bundle itself); a failed transaction yields one record (subtype
`transaction`). Each expected record names its subtype (the restful-interaction code), action,
outcome and the patients it concerns; user, role, on-behalf-of and organisation follow from
who sent the request. On both backends.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update
from typer.testing import CliRunner

from ekd.api.app import create_app
from ekd.interaction.base import Services
from ekd.security.principal import Role
from ekd.security.service import Security
from ekd.store.schema import audit_event, audit_patient
from tests.app_helpers import OTHER_ORG, TEST_ORG, security_for, token
from tests.fhir_helpers import BSN_SYSTEM, JSON, id_from_location, observation, patient

FHIR = "http://testserver/fhir"
BALP_USER = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
BSN = {"p1": "123456782", "p2": "999911132", "p3": "999911168", "pb": "999901795"}
#: A BSN that is sent (in an invalid create) but never stored anywhere.
BSN_REFUSED = "999912238"


@dataclass(frozen=True)
class Who:
    org: str
    role: Role
    user_id: str
    user_name: str
    on_behalf_of: str | None = None
    on_behalf_of_name: str | None = None


WHO = {
    "vpk": Who(TEST_ORG, Role.JEUGDVERPLEEGKUNDIGE, "900011111", "J. de Vries"),
    "assist": Who(TEST_ORG, Role.DOKTERSASSISTENT, "900022222", "K. Bos",
                  on_behalf_of="900033333", on_behalf_of_name="Dr. M. Smit"),
    "beheer": Who(TEST_ORG, Role.BEHEERDER, "900044444", "F. Beheer"),
    "arts_b": Who(OTHER_ORG, Role.JEUGDARTS, "900055555", "Dr. B. Bakker"),
}


@dataclass(frozen=True)
class Rec:
    """One expected audit record; `patients` name ids of the script ("p1") or literal refs."""

    subtype: str
    action: str
    outcome: str
    patients: tuple[str, ...] = ()
    operation: str | None = None
    #: The Patient resource itself was read: its BSN must be in the protected store.
    bsn: bool = False


@dataclass
class Step:
    who: str
    method: str
    url: str
    status: int
    records: list[Rec]
    body: object = None
    content_type: str = JSON
    #: Remember the id of the created resource (Location) under this name.
    save: str | None = None
    #: Remember the ids of a Bundle response's entries (Location), by position.
    save_entries: tuple[str | None, ...] = ()


def ok(subtype: str, action: str, *patients: str, operation: str | None = None) -> Rec:
    return Rec(subtype, action, "0", patients, operation)


def patient_read(name: str, subtype: str = "read") -> Rec:
    return Rec(subtype, "R", "0", (name,), bsn=True)


def failed(subtype: str, action: str, *patients: str, operation: str | None = None) -> Rec:
    return Rec(subtype, action, "4", patients, operation)


def _script() -> list[Step]:
    """The session: 100 requests. `{p1}` etc. are filled in as the ids become known."""
    s: list[Step] = []

    def add(*steps: Step) -> None:
        s.extend(steps)

    obs_p1 = "/fhir/Observation?subject=Patient/{p1}"
    # -- organisation A sets up two children and their measurements (vpk) ----------------------
    add(Step("vpk", "POST", "/fhir/Patient", 201, [ok("create", "C", "p1")],
             body=patient("Aalders", bsn=BSN["p1"]), save="p1"),
        Step("vpk", "POST", "/fhir/Patient", 201, [ok("create", "C", "p2")],
             body=patient("Brouwer", bsn=BSN["p2"]), save="p2"),
        Step("vpk", "POST", "/fhir/Observation", 201, [ok("create", "C", "p1")],
             body=observation("Patient/{p1}"), save="o1"),
        Step("vpk", "POST", "/fhir/Observation", 201, [ok("create", "C", "p1")],
             body=observation("Patient/{p1}", value=80.0), save="o2"),
        Step("vpk", "POST", "/fhir/Observation", 201, [ok("create", "C", "p2")],
             body=observation("Patient/{p2}"), save="o3"))
    # -- organisation B (a user of another organisation) ----------------------------------------
    add(Step("arts_b", "POST", "/fhir/Patient", 201, [ok("create", "C", "pb")],
             body=patient("Bakker", bsn=BSN["pb"]), save="pb"),
        Step("arts_b", "POST", "/fhir/Observation", 201, [ok("create", "C", "pb")],
             body=observation("Patient/{pb}"), save="ob"),
        Step("arts_b", "GET", "/fhir/Patient/{pb}", 200, [patient_read("pb")]))
    # -- reads, vreads, searches, history, operations (vpk) -------------------------------------
    add(Step("vpk", "GET", "/fhir/Patient/{p1}", 200, [patient_read("p1")]),
        Step("vpk", "GET", "/fhir/Patient/{p1}/_history/1", 200,
             [patient_read("p1", "vread")]),
        Step("vpk", "GET", "/fhir/Observation/{o1}", 200, [ok("read", "R", "p1")]),
        Step("vpk", "GET", obs_p1, 200, [ok("search-type", "E", "p1")]),
        Step("vpk", "GET", obs_p1 + "&_include=Observation:subject", 200,
             [ok("search-type", "E", "p1")]),
        Step("vpk", "GET", f"/fhir/Patient?identifier={BSN_SYSTEM}|{BSN['p1']}", 200,
             [ok("search-type", "E", "p1")]),
        Step("vpk", "GET", "/fhir/Patient?family=Nobody", 200, [ok("search-type", "E")]),
        Step("vpk", "PUT", "/fhir/Patient/{p1}", 200, [ok("update", "U", "p1")],
             body=patient("Aalders-Smit", bsn=BSN["p1"], id="{p1}")),
        Step("vpk", "GET", "/fhir/Patient/{p1}/_history", 200,
             [ok("history-instance", "R", "p1")]),
        Step("vpk", "GET", "/fhir/Patient/{p1}/_history/2", 200,
             [patient_read("p1", "vread")]),
        Step("vpk", "PATCH", "/fhir/Observation/{o2}", 200, [ok("patch", "U", "p1")],
             body=[{"op": "replace", "path": "/status", "value": "amended"}],
             content_type="application/json-patch+json"),
        Step("vpk", "GET", "/fhir/Patient/{p1}/$everything", 200,
             [ok("operation", "E", "p1", operation="$everything")]),
        Step("vpk", "GET", "/fhir/Patient/{p1}/$validate", 200,
             [ok("operation", "E", "p1", operation="$validate")]),
        Step("vpk", "DELETE", "/fhir/Observation/{o3}", 204, [ok("delete", "D", "p2")]))
    # -- failures ------------------------------------------------------------------------------
    add(Step("vpk", "GET", "/fhir/Patient/does-not-exist", 404,
             [failed("read", "R", "Patient/does-not-exist")]),
        Step("vpk", "GET", "/fhir/Observation/{o3}", 410, [failed("read", "R")]),
        Step("vpk", "GET", "/fhir/AuditEvent", 403, [failed("search-type", "E")]),
        Step("vpk", "POST", "/fhir/Patient", 422, [failed("create", "C")],
             body=patient("Ongeldig", bsn=BSN_REFUSED, gender="bogus")),
        # organisation B's child: exactly as if it did not exist, and audited as an attempt
        Step("vpk", "GET", "/fhir/Patient/{pb}", 404, [failed("read", "R", "pb")]),
        Step("vpk", "GET", "/fhir/Patient/{pb}/$everything", 404,
             [failed("operation", "E", "pb", operation="$everything")]),
        Step("arts_b", "GET", "/fhir/Patient/{p1}", 404, [failed("read", "R", "p1")]))
    # -- a transaction of three entries, a batch of three, a failed transaction ----------------
    add(Step("vpk", "POST", "/fhir", 200,
             [ok("create", "C", "p3"), ok("create", "C", "p3"), ok("update", "U", "p1")],
             body={"resourceType": "Bundle", "type": "transaction", "entry": [
                 {"fullUrl": "urn:uuid:7f1c6a44-0d3e-4c55-9b1a-7d6a0c1e2f01",
                  "resource": patient("Claassen", bsn=BSN["p3"]),
                  "request": {"method": "POST", "url": "Patient"}},
                 {"resource": observation("urn:uuid:7f1c6a44-0d3e-4c55-9b1a-7d6a0c1e2f01"),
                  "request": {"method": "POST", "url": "Observation"}},
                 {"resource": {**observation("Patient/{p1}", value=76.0), "id": "{o1}"},
                  "request": {"method": "PUT", "url": "Observation/{o1}"}}]},
             save_entries=("p3", "o4", None)),
        Step("vpk", "POST", "/fhir", 200,
             [patient_read("p1"), failed("read", "R", "Patient/gone-missing"),
              ok("create", "C", "p2")],
             body={"resourceType": "Bundle", "type": "batch", "entry": [
                 {"request": {"method": "GET", "url": "Patient/{p1}"}},
                 {"request": {"method": "GET", "url": "Patient/gone-missing"}},
                 {"resource": observation("Patient/{p2}", value=81.0),
                  "request": {"method": "POST", "url": "Observation"}}]}),
        Step("vpk", "POST", "/fhir", 422, [failed("transaction", "E")],
             body={"resourceType": "Bundle", "type": "transaction", "entry": [
                 {"resource": observation("Patient/{p2}", value=90.0),
                  "request": {"method": "POST", "url": "Observation"}},
                 {"resource": patient("Fout", bsn=None, gender="bogus"),
                  "request": {"method": "POST", "url": "Patient"}}]}))
    # -- a doktersassistent acting on behalf of a jeugdarts -------------------------------------
    add(Step("assist", "GET", "/fhir/Patient/{p1}", 200, [patient_read("p1")]),
        Step("assist", "POST", "/fhir/Observation", 201, [ok("create", "C", "p1")],
             body=observation("Patient/{p1}", value=77.0), save="o5"),
        Step("assist", "DELETE", "/fhir/Observation/{o5}", 403, [failed("delete", "D")]),
        Step("assist", "GET", "/fhir/Patient/{p3}", 200, [patient_read("p3")]))
    # -- the functional administrator --------------------------------------------------------
    add(Step("beheer", "GET", "/fhir/Observation/{o1}", 403, [failed("read", "R")]),
        Step("beheer", "GET", "/fhir/Patient/{p2}", 200, [patient_read("p2")]),
        Step("beheer", "GET", "/fhir/AuditEvent?patient=Patient/{p1}&_count=5", 200,
             [ok("search-type", "E")]))
    # -- day-to-day work until there are 100 requests -----------------------------------------
    rounds = [
        ("vpk", "GET", "/fhir/Patient/{p1}", 200, patient_read("p1")),
        ("vpk", "GET", "/fhir/Observation/{o2}", 200, ok("read", "R", "p1")),
        ("vpk", "GET", "/fhir/Observation?subject=Patient/{p2}", 200,
         ok("search-type", "E", "p2")),
        ("arts_b", "GET", "/fhir/Observation/{ob}", 200, ok("read", "R", "pb")),
        ("vpk", "GET", "/fhir/Patient/{p3}/_history/1", 200, patient_read("p3", "vread")),
        ("arts_b", "GET", "/fhir/Observation/{o1}", 404, failed("read", "R")),
        ("vpk", "GET", "/fhir/Observation/{o4}", 200, ok("read", "R", "p3")),
    ]
    i = 0
    while len(s) < 98:
        who, method, url, status, rec = rounds[i % len(rounds)]
        add(Step(who, method, url, status, [rec]))
        i += 1
    add(Step("vpk", "GET", "/fhir/Patient/{p2}/$everything", 200,
             [ok("operation", "E", "p2", operation="$everything")]),
        Step("arts_b", "GET", "/fhir/Patient?family=Bakker", 200,
             [ok("search-type", "E", "pb")]))
    return s


SCRIPT = _script()


def _fill(value: object, ids: dict[str, str]) -> object:
    """`{name}` placeholders replaced by the ids known so far (in strings, dicts, lists)."""
    if isinstance(value, str):
        for name, rid in ids.items():
            value = value.replace("{" + name + "}", rid)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@dataclass
class Session:
    services: Services
    security: Security
    http: TestClient
    headers: dict[str, dict[str, str]]
    ids: dict[str, str] = field(default_factory=dict)
    #: (who, expected record) in the order the records must appear.
    expected: list[tuple[str, Rec]] = field(default_factory=list)


def _token(security: Security, services: Services, who: Who) -> str:
    base = token(security, services, org=who.org, role=who.role)  # registers the client
    assert base
    return security.tokens.mint(
        f"test-{who.org}", role=who.role, audience=FHIR, user_id=who.user_id,
        user_name=who.user_name, on_behalf_of=who.on_behalf_of,
        on_behalf_of_name=who.on_behalf_of_name)


def _run(session: Session) -> None:
    for n, step in enumerate(SCRIPT):
        url = _fill(step.url, session.ids)
        assert isinstance(url, str) and "{" not in url, url
        kwargs: dict = {"headers": {**session.headers[step.who], "Accept": JSON}}
        if step.body is not None:
            kwargs["content"] = json.dumps(_fill(step.body, session.ids))
            kwargs["headers"]["Content-Type"] = step.content_type
        answer = session.http.request(step.method, url, **kwargs)
        assert answer.status_code == step.status, (n, step.method, url, answer.text)
        if step.save:
            session.ids[step.save] = id_from_location(answer.headers["location"])
        entries = answer.json().get("entry", []) if step.save_entries else []
        for name, entry in zip(step.save_entries, entries, strict=True):
            if name:
                session.ids[name] = id_from_location(entry["response"]["location"])
        session.expected.extend((step.who, rec) for rec in step.records)


@pytest.fixture
def session(services: Services) -> Iterator[Session]:
    security = security_for(services)
    with TestClient(create_app(services=services, security=security),
                    raise_server_exceptions=False) as http:
        headers = {name: {"Authorization": "Bearer " + _token(security, services, who)}
                   for name, who in WHO.items()}
        s = Session(services, security, http, headers)
        _run(s)
        yield s


def _stored(services: Services) -> tuple[list, dict[int, list]]:
    with services.db.read() as conn:
        events = conn.execute(select(audit_event).order_by(audit_event.c.pk)).all()
        patients: dict[int, list] = {}
        for row in conn.execute(select(audit_patient)):
            patients.setdefault(row.audit_pk, []).append(row)
    return events, patients


def _agent(event: dict, system: str, code: str) -> dict | None:
    for agent in event["agent"]:
        if any(c.get("system") == system and c.get("code") == code
               for c in agent["type"]["coding"]):
            return agent
    return None


def _ref(name: str, ids: dict[str, str]) -> str:
    return name if "/" in name else f"Patient/{ids[name]}"


def test_script_has_100_requests() -> None:
    assert len(SCRIPT) == 100
    assert sum(len(step.records) for step in SCRIPT) == 104
    assert sum(rec.bsn for step in SCRIPT for rec in step.records) >= 10
    kinds = {rec.subtype for step in SCRIPT for rec in step.records}
    assert {"read", "vread", "search-type", "history-instance", "create", "update", "patch",
            "delete", "operation", "transaction"} <= kinds


def test_exactly_the_expected_records(session: Session) -> None:
    ids = session.ids
    events, patients = _stored(session.services)
    got = [(r.subtype, r.action, r.outcome) for r in events]
    want = [(rec.subtype, rec.action, rec.outcome) for _, rec in session.expected]
    # 100 requests; the transaction and the batch yield three records each
    assert len(events) == len(session.expected) == 104
    assert got == want
    for n, (row, (who_name, rec)) in enumerate(zip(events, session.expected, strict=True)):
        who = WHO[who_name]
        event = row.content
        where = f"record {n}: {rec}"
        assert event["id"] == row.id
        assert event["subtype"][0]["code"] == rec.subtype, where
        assert [c["code"] for c in event["subtype"][1:]] == (
            [rec.operation] if rec.operation else []), where
        assert event["action"] == rec.action and event["outcome"] == rec.outcome, where
        assert row.org == who.org, where
        assert event["source"]["observer"]["identifier"]["value"] == who.org, where
        user = _agent(event, BALP_USER, "UserOauthAgent")
        assert user is not None, where
        assert user["who"]["identifier"]["value"] == who.user_id == row.user_id, where
        assert user["who"]["display"] == who.user_name, where
        assert user["role"][0]["coding"][0]["code"] == who.role.value, where
        assert user["requestor"] is True
        behalf = _agent(event, PARTICIPATION, "RESP")
        if who.on_behalf_of is None:
            assert behalf is None, where
        else:
            assert behalf is not None, where
            assert behalf["who"]["identifier"]["value"] == who.on_behalf_of, where
            assert behalf["who"]["display"] == who.on_behalf_of_name, where
        assert row.client_id == f"test-{who.org}", where
        expected_refs = sorted(_ref(p, ids) for p in rec.patients)
        rows = patients.get(row.pk, [])
        assert sorted(p.patient for p in rows) == expected_refs, where
        assert sorted(e["what"]["reference"] for e in event.get("entity", ())
                      if e.get("role", {}).get("code") == "1") == expected_refs, where
        by_id = {f"Patient/{ids[k]}": v for k, v in BSN.items() if k in ids}
        for p in rows:
            assert p.org == who.org, where
            # a BSN recorded is the BSN of that patient, never another child's
            assert p.bsn in (None, by_id.get(p.patient)), where
        if rec.bsn:
            # a Patient read: the BSN is kept in the protected store
            assert [p.bsn for p in rows] == [by_id[expected_refs[0]]], where
    # no record ever carries the refused BSN, and no stored AuditEvent carries any BSN
    assert all(p.bsn != BSN_REFUSED for rows in patients.values() for p in rows)
    for row in events:
        text = json.dumps(row.content)
        for bsn in (*BSN.values(), BSN_REFUSED):
            assert bsn not in text, (row.subtype, bsn)


def _page_all(http: TestClient, headers: dict[str, str]) -> list[dict]:
    events: list[dict] = []
    url: str | None = "/fhir/AuditEvent?_count=17"
    pages = 0
    while url is not None:
        answer = http.get(url, headers={**headers, "Accept": JSON})
        assert answer.status_code == 200, answer.text
        text = answer.text
        for bsn in (*BSN.values(), BSN_REFUSED):
            assert bsn not in text
            assert base64.b64encode(bsn.encode()).decode()[:8] not in text
        body = answer.json()
        events.extend(e["resource"] for e in body.get("entry", []))
        url = next((link["url"] for link in body.get("link", [])
                    if link["relation"] == "next"), None)
        if url is not None:
            url = url.removeprefix("http://testserver")
        pages += 1
        assert pages < 50
    return events


def test_audit_log_over_fhir_is_per_organisation_and_without_bsn(session: Session) -> None:
    events, _ = _stored(session.services)
    a_ids = [r.id for r in events if r.org == TEST_ORG]
    b_ids = [r.id for r in events if r.org == OTHER_ORG]
    assert len(a_ids) == sum(1 for who, _ in session.expected if WHO[who].org == TEST_ORG)
    assert len(b_ids) == sum(1 for who, _ in session.expected if WHO[who].org == OTHER_ORG)

    beheerder_a = session.headers["beheer"]
    seen_a = _page_all(session.http, beheerder_a)
    # newest first, every record of A exactly once, none of B's
    assert [e["id"] for e in seen_a] == list(reversed(a_ids))
    beheerder_b = {"Authorization": "Bearer " + _token(
        session.security, session.services,
        Who(OTHER_ORG, Role.BEHEERDER, "900066666", "G. Beheer B"))}
    seen_b = _page_all(session.http, beheerder_b)
    assert [e["id"] for e in seen_b] == list(reversed(b_ids))
    assert {e["source"]["observer"]["identifier"]["value"] for e in seen_b} == {OTHER_ORG}
    assert {e["source"]["observer"]["identifier"]["value"] for e in seen_a} == {TEST_ORG}
    # the identifier search was recorded with its query in the protected store, masked here
    searched = [e for e in seen_a if any("_query" in x for x in e.get("entity", ()))]
    assert searched and all("query" not in x for e in seen_a for x in e.get("entity", ()))
    # B's beheerder cannot read A's records by id either
    assert session.http.get(f"/fhir/AuditEvent/{a_ids[0]}",
                            headers=beheerder_b).status_code == 404
    assert session.http.get(f"/fhir/AuditEvent/{a_ids[0]}",
                            headers=beheerder_a).status_code == 200


def _verify(session: Session) -> tuple[int, str]:
    from ekd.cli.main import app

    url = session.services.db.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["audit", "verify", "--database-url", url],
                                env={"COLUMNS": "250"})
    return result.exit_code, result.output


def test_tampering_is_reported_by_audit_verify(session: Session) -> None:
    events, _ = _stored(session.services)
    code, out = _verify(session)
    assert code == 0, out
    assert f"{TEST_ORG}: {sum(r.org == TEST_ORG for r in events)} records, chain intact" in out
    assert f"{OTHER_ORG}: {sum(r.org == OTHER_ORG for r in events)} records, chain intact" in out

    # someone edits one of A's records (who read the child) in the database
    victim = [r for r in events if r.org == TEST_ORG and r.subtype == "read"][3]
    edited = json.loads(json.dumps(victim.content))
    user = _agent(edited, BALP_USER, "UserOauthAgent")
    assert user is not None
    user["who"]["display"] = user["name"] = "Iemand Anders"
    with session.services.db.write() as conn:
        conn.execute(update(audit_event).where(audit_event.c.pk == victim.pk)
                     .values(content=edited))
    code, out = _verify(session)
    assert code == 1, out
    assert f"record pk {victim.pk} (AuditEvent/{victim.id}): altered" in out
    assert out.count("altered") == 1
    assert f"{OTHER_ORG}: {sum(r.org == OTHER_ORG for r in events)} records, chain intact" in out

    # and removes the newest record of B's chain
    last_b = [r for r in events if r.org == OTHER_ORG][-1]
    with session.services.db.write() as conn:
        conn.execute(delete(audit_patient).where(audit_patient.c.audit_pk == last_b.pk))
        conn.execute(delete(audit_event).where(audit_event.c.pk == last_b.pk))
    code, out = _verify(session)
    assert code == 1, out
    assert f"the newest records are missing: the head points at pk {last_b.pk}" in out
    b_line = next(line for line in out.splitlines() if line.strip().startswith(OTHER_ORG))
    assert "1 problem(s)" in b_line
    assert f"record pk {victim.pk}" in out  # A's edit is still reported
    for bsn in BSN.values():
        assert bsn not in out


# -- rules the scripted session does not reach --------------------------------------------------


@pytest.fixture
def small(services: Services) -> Iterator[Session]:
    """Organisation A's vpk with one child and one measurement, and nothing audited yet."""
    security = security_for(services)
    with TestClient(create_app(services=services, security=security),
                    raise_server_exceptions=False) as http:
        s = Session(services, security, http,
                    {"vpk": {"Authorization": "Bearer " + _token(security, services,
                                                                 WHO["vpk"])}})
        for name, resource in (("p1", patient("Aalders", bsn=BSN["p1"])),
                               ("o1", observation("Patient/{p1}"))):
            created = http.post(f"/fhir/{resource['resourceType']}",
                                content=json.dumps(_fill(resource, s.ids)),
                                headers={**s.headers["vpk"], "Content-Type": JSON})
            assert created.status_code == 201, created.text
            s.ids[name] = id_from_location(created.headers["location"])
        with services.db.write() as conn:
            conn.execute(delete(audit_patient))
            conn.execute(delete(audit_event))
        yield s


def _new_records(s: Session) -> list:
    events, patients = _stored(s.services)
    return [(r.subtype, r.action, r.outcome, sorted(p.patient for p in patients.get(r.pk, [])))
            for r in events]


def test_validate_of_a_stored_resource_names_its_patient(small: Session) -> None:
    answer = small.http.get(_fill("/fhir/Observation/{o1}/$validate", small.ids),
                            headers=small.headers["vpk"])
    assert answer.status_code == 200, answer.text
    assert _new_records(small) == [("operation", "E", "0", [f"Patient/{small.ids['p1']}"])]


def test_a_transaction_refused_at_parsing_is_audited_once(small: Session) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _fill(observation("Patient/{p1}"), small.ids),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": _fill(observation("Patient/{p1}"), small.ids), "request": {}}]}
    answer = small.http.post("/fhir", content=json.dumps(bundle),
                             headers={**small.headers["vpk"], "Content-Type": JSON})
    assert answer.status_code == 400, answer.text
    assert _new_records(small) == [("transaction", "E", "4", [])]


def test_a_transaction_failing_at_an_entry_is_audited_once(small: Session) -> None:
    """The control for the test above: a failure while the entries run gives one record."""
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _fill(observation("Patient/{p1}"), small.ids),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/not-there"}}]}
    answer = small.http.post("/fhir", content=json.dumps(bundle),
                             headers={**small.headers["vpk"], "Content-Type": JSON})
    assert answer.status_code == 404, answer.text
    assert _new_records(small) == [("transaction", "E", "4", [])]
    # and the Observation of the first entry was rolled back
    found = small.http.get(_fill("/fhir/Observation?subject=Patient/{p1}", small.ids),
                           headers=small.headers["vpk"]).json()
    assert len(found.get("entry", [])) == 1
