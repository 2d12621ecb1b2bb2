"""Organisation scoping and the role permission matrix, over HTTP, on both backends.

Organisation B holds a child's dossier; a token of organisation A must get nothing of it from
any interaction (it answers exactly as if the resources did not exist), and B's data must be
unchanged afterwards. Each role's rights are checked against the matrix written out here (the
same table as the README and `ekd.security.policy`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from ekd.api.app import create_app
from ekd.interaction.base import Services
from ekd.security.principal import Role
from ekd.security.service import Security
from tests.app_helpers import OTHER_ORG, TEST_ORG, security_for, token
from tests.fhir_helpers import BSN_SYSTEM, JSON, id_from_location, observation, patient

BSN_B = "999901795"


@dataclass
class World:
    app_client: TestClient
    services: Services
    security: Security
    a: dict[str, str]
    b: dict[str, str]
    ids: dict[str, str]

    def as_(self, org: str, role: Role = Role.SYSTEM, scope: str | None = None
            ) -> dict[str, str]:
        kwargs = {"scope": scope} if scope else {}
        return {"Authorization": "Bearer " + token(self.security, self.services, org=org,
                                                     role=role, **kwargs)}

    def req(self, method: str, url: str, headers: dict[str, str], **kwargs):
        return self.app_client.request(method, url, headers=headers, **kwargs)


def _create(w: World, headers: dict[str, str], resource: dict) -> str:
    r = w.req("POST", f"/fhir/{resource['resourceType']}", headers,
              json=resource)
    assert r.status_code == 201, r.text
    return id_from_location(r.headers["location"])


@pytest.fixture
def world(services: Services) -> Iterator[World]:
    security = security_for(services)
    with TestClient(create_app(services=services, security=security),
                    raise_server_exceptions=False) as c:
        w = World(c, services, security, {}, {}, {})
        w.a, w.b = w.as_(TEST_ORG), w.as_(OTHER_ORG)
        w.ids["pb"] = _create(w, w.b, patient("Bakker", bsn=BSN_B))
        w.ids["ob"] = _create(w, w.b, observation(f"Patient/{w.ids['pb']}"))
        w.ids["pa"] = _create(w, w.a, patient("Aalders", bsn="123456782"))
        # A's own observation pointing at B's child (a client error or a probe): references
        # must not open B's data.
        w.ids["oa"] = _create(w, w.a, observation(f"Patient/{w.ids['pb']}"))
        # B's observation pointing at A's child: A must not see it through the reference.
        w.ids["ob_on_a"] = _create(w, w.b, observation(f"Patient/{w.ids['pa']}", value=99.0))
        yield w


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"}


def _b_unchanged(w: World) -> None:
    r = w.req("GET", f"/fhir/Patient/{w.ids['pb']}", w.b)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"
    assert r.json()["name"] == [{"family": "Bakker"}]
    assert w.req("GET", f"/fhir/Observation/{w.ids['ob']}", w.b).status_code == 200


def test_b_sees_its_own_dossier(world: World) -> None:
    """The control: the same requests with B's token do find B's data."""
    w = world
    assert w.req("GET", f"/fhir/Patient/{w.ids['pb']}", w.b).status_code == 200
    found = w.req("POST", "/fhir/Patient/_search", w.b,
                  data={"identifier": f"{BSN_SYSTEM}|{BSN_B}"}).json()
    assert _ids(found) == {w.ids["pb"]}
    everything = w.req("GET", f"/fhir/Patient/{w.ids['pb']}/$everything", w.b).json()
    assert w.ids["ob"] in _ids(everything)


@pytest.mark.parametrize("method,path", [
    ("GET", "/fhir/Patient/{pb}"),
    ("GET", "/fhir/Patient/{pb}/_history/1"),
    ("GET", "/fhir/Patient/{pb}/_history"),
    ("GET", "/fhir/Observation/{ob}"),
    ("GET", "/fhir/Patient/{pb}/$everything"),
    ("PATCH", "/fhir/Patient/{pb}"),
])
def test_instance_interactions_answer_not_found(world: World, method: str, path: str) -> None:
    w = world
    kwargs: dict = {}
    if method == "PATCH":
        kwargs = {"content": b'[{"op": "replace", "path": "/gender", "value": "male"}]',
                  "headers": {**w.a, "Content-Type": "application/json-patch+json"}}
        r = w.app_client.request(method, path.format(**w.ids), **kwargs)
    else:
        r = w.req(method, path.format(**w.ids), w.a)
    assert r.status_code == 404, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    # exactly as for an id never used
    never = w.req("GET", "/fhir/Patient/never-used", w.a)
    assert never.status_code == 404
    _b_unchanged(w)


def test_update_and_delete_do_not_touch_b(world: World) -> None:
    w = world
    body = {**patient("Overschreven"), "id": w.ids["pb"]}
    r = w.req("PUT", f"/fhir/Patient/{w.ids['pb']}", {**w.a, "Content-Type": JSON}, json=body)
    assert r.status_code == 409  # the id is taken server-wide; nothing of B is shown
    assert "Bakker" not in r.text
    r = w.req("DELETE", f"/fhir/Patient/{w.ids['pb']}", w.a)
    assert r.status_code == 204  # deleting what does not exist (for A) is not an error
    _b_unchanged(w)


def test_searches_see_nothing_of_b(world: World) -> None:
    w = world
    cases = {
        f"/fhir/Patient?_id={w.ids['pb']}": set(),
        "/fhir/Patient?family=Bakker": set(),
        f"/fhir/Observation?subject=Patient/{w.ids['pb']}": {w.ids["oa"]},
        "/fhir/Observation?subject.family=Bakker": set(),  # chain into B's child
        "/fhir/Patient?_has:Observation:subject:value-quantity=99": set(),  # B's observation
        f"/fhir/Observation?_id={w.ids['oa']}&_include=Observation:subject": {w.ids["oa"]},
        f"/fhir/Patient?_id={w.ids['pa']}&_revinclude=Observation:subject": {w.ids["pa"]},
        "/fhir/Observation": {w.ids["oa"]},
    }
    for url, expected in cases.items():
        r = w.req("GET", url, w.a)
        assert r.status_code == 200, (url, r.text)
        assert _ids(r.json()) == expected, url
    r = w.req("POST", "/fhir/Patient/_search", w.a,
              data={"identifier": f"{BSN_SYSTEM}|{BSN_B}"})
    assert _ids(r.json()) == set()
    assert w.req("GET", "/fhir/Patient?_summary=count&family=Bakker", w.a).json()["total"] == 0


def test_everything_and_history_of_a_leave_out_b(world: World) -> None:
    w = world
    everything = w.req("GET", f"/fhir/Patient/{w.ids['pa']}/$everything", w.a).json()
    assert _ids(everything) == {w.ids["pa"]}  # not B's observation on A's child
    for url in ("/fhir/_history", "/fhir/Patient/_history", "/fhir/Observation/_history"):
        body = w.req("GET", url, w.a).json()
        seen = {e["fullUrl"].rsplit("/", 1)[-1] for e in body.get("entry", [])}
        assert seen <= {w.ids["pa"], w.ids["oa"]} and seen, url


def test_paging_links_of_b_do_not_open_b_for_a(world: World) -> None:
    w = world
    _create(w, w.b, patient("Bakker", bsn=None))
    page = w.req("GET", "/fhir/Patient?family=Bakker&_count=1", w.b).json()
    link = next(x["url"] for x in page["link"] if x["relation"] == "next")
    parts = urlsplit(link)
    r = w.req("GET", f"{parts.path}?{parts.query}", w.a)
    assert r.status_code == 200 and _ids(r.json()) == set()


def test_conditional_interactions_are_scoped(world: World) -> None:
    w = world
    query = f"identifier={BSN_SYSTEM}|{BSN_B}"
    # conditional create: no match in A, so A gets its own new resource
    r = w.req("POST", "/fhir/Patient", {**w.a, "If-None-Exist": query}, json=patient("Nieuw"))
    assert r.status_code == 201
    assert id_from_location(r.headers["location"]) != w.ids["pb"]
    # conditional delete and update match only A's resources
    w.req("DELETE", f"/fhir/Patient?{query}", w.a)
    r = w.req("PUT", "/fhir/Patient?family=Bakker", w.a, json=patient("Bakker2"))
    assert r.status_code == 201
    _b_unchanged(w)


def test_transactions_and_batches_are_scoped(world: World) -> None:
    w = world
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": "urn:uuid:0b0e7a34-0000-4000-8000-000000000001",
        "resource": observation(f"Patient?identifier={BSN_SYSTEM}|{BSN_B}"),
        "request": {"method": "POST", "url": "Observation"}}]}
    r = w.req("POST", "/fhir", w.a, json=bundle)
    assert r.status_code == 412, r.text  # the conditional reference resolves to nothing
    read = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{w.ids['pb']}"}}]}
    assert w.req("POST", "/fhir", w.a, json=read).status_code == 404
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{w.ids['pb']}"}},
        {"request": {"method": "GET", "url": f"Patient/{w.ids['pa']}"}}]}
    out = w.req("POST", "/fhir", w.a, json=batch).json()
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["404", "200"]
    assert "Bakker" not in str(out)
    _b_unchanged(w)


def test_attempts_on_b_are_audited_for_a(world: World) -> None:
    w = world
    assert w.req("GET", f"/fhir/Patient/{w.ids['pb']}", w.a).status_code == 404
    beheerder_a = w.as_(TEST_ORG, Role.BEHEERDER)
    log = w.req("GET", f"/fhir/AuditEvent?patient=Patient/{w.ids['pb']}", beheerder_a).json()
    outcomes = [(e["resource"]["subtype"][0]["code"], e["resource"]["outcome"])
                for e in log.get("entry", [])]
    assert ("read", "4") in outcomes
    # B's own log knows nothing of A's attempt; A's log holds nothing of B's work
    beheerder_b = w.as_(OTHER_ORG, Role.BEHEERDER)
    log_b = w.req("GET", f"/fhir/AuditEvent?patient=Patient/{w.ids['pb']}", beheerder_b).json()
    clients = {a.get("who", {}).get("display") for e in log_b.get("entry", [])
               for a in e["resource"]["agent"]}
    assert all(TEST_ORG not in str(c) for c in clients)
    assert BSN_B not in str(log) and BSN_B not in str(log_b)


# -- roles -----------------------------------------------------------------------------------

#: The written matrix (README, ekd.security.policy): role -> category -> actions allowed.
EXPECTED = {
    Role.JEUGDARTS: {"admin": "cruds", "clinical": "cruds", "consent": "cruds",
                     "conformance": "rs", "audit": ""},
    Role.JEUGDVERPLEEGKUNDIGE: {"admin": "cruds", "clinical": "cruds", "consent": "cruds",
                                "conformance": "rs", "audit": ""},
    Role.DOKTERSASSISTENT: {"admin": "crus", "clinical": "crus", "consent": "rs",
                            "conformance": "rs", "audit": ""},
    Role.ADMINISTRATIEF_MEDEWERKER: {"admin": "cruds", "clinical": "", "consent": "rs",
                                     "conformance": "rs", "audit": ""},
    Role.BEHEERDER: {"admin": "rs", "clinical": "", "consent": "rs", "conformance": "cruds",
                     "audit": "rs"},
    Role.SYSTEM: {"admin": "cruds", "clinical": "cruds", "consent": "cruds",
                  "conformance": "rs", "audit": "rs"},
}

CONSENT = {"resourceType": "Consent", "status": "active",
           "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                 "consentscope", "code": "patient-privacy"}]},
           "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
           "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                      "v3-ActCode", "code": "OPTIN"}]}}
VALUESET = {"resourceType": "ValueSet", "status": "draft", "url": "http://example.org/vs/x"}


def _sample(category: str, pid: str) -> dict:
    return {"admin": patient("Rol", bsn=None), "clinical": observation(f"Patient/{pid}"),
            "consent": {**CONSENT, "patient": {"reference": f"Patient/{pid}"}},
            "conformance": VALUESET}[category]


def _allowed(status: int) -> bool:
    assert status not in (401, 500), status
    return status != 403


@pytest.mark.parametrize("role", list(EXPECTED))
def test_role_matrix(world: World, role: Role) -> None:
    w = world
    me = w.as_(TEST_ORG, role)
    for category, allowed in EXPECTED[role].items():
        if category == "audit":
            r = w.req("GET", "/fhir/AuditEvent", me)
            assert _allowed(r.status_code) == ("s" in allowed), (role, category)
            assert w.req("POST", "/fhir/AuditEvent", me,
                         json={"resourceType": "AuditEvent"}).status_code in (403, 405)
            continue
        sample = _sample(category, w.ids["pa"])
        rtype = sample["resourceType"]
        # a resource of the category to read, update and delete, made by a system client
        # (conformance resources: by a beheerder, the only role that may write them)
        maker = w.as_(TEST_ORG, Role.BEHEERDER) if category == "conformance" else w.a
        rid = _create(w, maker, sample)
        got = {
            "c": w.req("POST", f"/fhir/{rtype}", me, json=sample).status_code,
            "r": w.req("GET", f"/fhir/{rtype}/{rid}", me).status_code,
            "u": w.req("PUT", f"/fhir/{rtype}/{rid}", me,
                       json={**sample, "id": rid}).status_code,
            "s": w.req("GET", f"/fhir/{rtype}", me).status_code,
            "d": w.req("DELETE", f"/fhir/{rtype}/{rid}", me).status_code,
        }
        for action, status in got.items():
            assert _allowed(status) == (action in allowed), (role, category, action, status)


def test_beheerder_everything_leaves_out_clinical_content(world: World) -> None:
    w = world
    me = w.as_(TEST_ORG, Role.BEHEERDER)
    body = w.req("GET", f"/fhir/Patient/{w.ids['pa']}/$everything", me).json()
    assert {e["resource"]["resourceType"] for e in body["entry"]} == {"Patient"}
    clinical = w.req("GET", f"/fhir/Observation?_id={w.ids['oa']}", me)
    assert clinical.status_code == 403
    inc = w.req("GET", f"/fhir/Patient?_id={w.ids['pa']}&_revinclude=Observation:subject", me)
    assert {e["resource"]["resourceType"] for e in inc.json()["entry"]} == {"Patient"}


def test_scopes_narrow_a_role(world: World) -> None:
    w = world
    narrow = w.as_(TEST_ORG, Role.JEUGDARTS, scope="user/Patient.rs")
    assert w.req("GET", f"/fhir/Patient/{w.ids['pa']}", narrow).status_code == 200
    assert w.req("GET", f"/fhir/Observation/{w.ids['oa']}", narrow).status_code == 403
    r = w.req("POST", "/fhir/Patient", narrow, json=patient("X", bsn=None))
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"


def test_no_token_no_data(world: World) -> None:
    w = world
    r = w.app_client.get(f"/fhir/Patient/{w.ids['pa']}")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert w.app_client.get("/fhir/metadata").status_code == 200
    bad = {"Authorization": "Bearer not-a-token"}
    assert w.req("GET", f"/fhir/Patient/{w.ids['pa']}", bad).status_code == 401


def test_rate_limit_per_client(services: Services) -> None:
    from dataclasses import replace

    tight = replace(services, settings=replace(services.settings, rate_limit=60, rate_burst=2))
    security = security_for(tight)
    with TestClient(create_app(services=tight, security=security),
                    raise_server_exceptions=False) as c:
        mine = {"Authorization": "Bearer " + token(security, tight)}
        other = {"Authorization": "Bearer " + token(security, tight, org=OTHER_ORG)}
        statuses = [c.get("/fhir/Patient", headers=mine).status_code for _ in range(4)]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        r = c.get("/fhir/Patient", headers=mine)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["issue"][0]["code"] == "throttled"
        assert c.get("/fhir/Patient", headers=other).status_code == 200  # per client
        form = {"grant_type": "client_credentials"}
        token_statuses = [c.post("/auth/token", data=form).status_code for _ in range(4)]
        assert token_statuses[0] == 400 and token_statuses[-1] == 429


def test_reads_are_audited_with_relaxed_durability(services: Services) -> None:
    """EKD_AUDIT_DURABLE_READS=false changes when the disk sees a read's record, not whether
    it is committed before the response."""
    from dataclasses import replace

    from sqlalchemy import func, select

    from ekd.store.schema import audit_event

    relaxed = replace(services, settings=replace(services.settings, audit_durable_reads=False))
    security = security_for(relaxed)
    with TestClient(create_app(services=relaxed, security=security),
                    raise_server_exceptions=False) as c:
        me = {"Authorization": "Bearer " + token(security, relaxed)}
        pid = id_from_location(c.post("/fhir/Patient", headers=me,
                                      json=patient("Los")).headers["location"])
        for _ in range(3):
            assert c.get(f"/fhir/Patient/{pid}", headers=me).status_code == 200
        with relaxed.db.read() as conn:
            reads = conn.execute(select(func.count()).select_from(audit_event).where(
                audit_event.c.subtype == "read")).scalar_one()
    assert reads == 3
