"""`ResourceStore.create_many` stores exactly what `create` per item would, on both backends.

The batch is how a received dossier is imported (one statement per chunk on PostgreSQL, a few
on SQLite instead of a round trip or ~8 statements per resource), so it must be
indistinguishable afterwards: same content and meta, same version rows, same index rows in
every index table, same organisation, `seq` in item order, and the same `VersionConflict`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, text

import ekd.store.resources as resources_module
from ekd.interaction.base import Services
from ekd.jgz.demo import generate
from ekd.store.resources import BATCH_CHUNK, Stored, VersionConflict
from ekd.store.schema import INDEX_TABLES
from tests.app_helpers import OTHER_ORG, TEST_ORG, fhir_client
from tests.db_helpers import empty_database
from tests.fhir_helpers import observation, patient

FROZEN = datetime(2026, 11, 22, 12, 34, 56, 789000, tzinfo=UTC)


def dossier() -> list[tuple[str, str, dict]]:
    """A varied synthetic dossier of 206 resources (one child's transaction Bundle, plus a
    shared ValueSet) with ids given and urn:uuid references rewritten to them."""
    bundle = list(generate(2, seed=3))[1]
    local: dict[str, str] = {}
    items: list[tuple[str, str, dict]] = []
    for n, entry in enumerate(bundle["entry"]):
        resource = entry["resource"]
        rid = f"{resource['resourceType'].lower()}-{n}"
        local[entry["fullUrl"]] = f"{resource['resourceType']}/{rid}"
        items.append((resource["resourceType"], rid, resource))

    def rewrite(value: object) -> object:
        if isinstance(value, dict):
            return {k: (local.get(v, v) if k == "reference" and isinstance(v, str)
                        else rewrite(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    out = [(rtype, rid, rewrite(content)) for rtype, rid, content in items]
    out.append(("ValueSet", "vs-shared", {
        "resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs/batch",
        "name": "BatchValueSet"}))
    return out


def snapshot(conn: Connection) -> dict[str, list[tuple]]:
    """Every row the store wrote, with pk/seq replaced by the resource's (type, id)."""
    out: dict[str, list[tuple]] = {}
    out["resource"] = sorted(conn.execute(text(
        "SELECT type, id, version, last_updated, deleted, org FROM resource")).all())
    versions = conn.execute(text(
        "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.content, v.org, r.type, "
        "r.id FROM resource_version v JOIN resource r ON r.pk = v.resource_pk")).all()
    out["resource_version"] = sorted(tuple(repr(c) for c in row) for row in versions)
    for table, t in INDEX_TABLES.items():
        columns = [c.name for c in t.columns if c.name != "resource_pk"]
        rows = conn.execute(text(
            f"SELECT r.type, r.id, {', '.join('x.' + c for c in columns)} FROM {table} x "
            "JOIN resource r ON r.pk = x.resource_pk")).all()
        out[table] = sorted(tuple(repr(c) for c in row) for row in rows)
    return out


def without_keys(stored: Stored) -> tuple:
    return (stored.type, stored.id, stored.version, stored.last_updated, stored.deleted,
            stored.content, stored.method, stored.org)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One `now()` for everything, so timestamps compare equal between the two ways."""
    monkeypatch.setattr(resources_module, "now", lambda: FROZEN)
    yield


def test_batch_stores_what_create_would(services: Services, frozen: None) -> None:
    items = dossier()
    assert len(items) > 200
    with services.db.write() as conn:
        store = services.store(conn, TEST_ORG)
        one_by_one = [store.create(t, i, c, method="PUT") for t, i, c in items]
    with services.db.read() as conn:
        expected = snapshot(conn)
    empty_database(services.db)

    with services.db.write() as conn:
        batched = services.store(conn, TEST_ORG).create_many(items)
    with services.db.read() as conn:
        got = snapshot(conn)

    assert [without_keys(s) for s in batched] == [without_keys(s) for s in one_by_one]
    for table in expected:
        assert got[table] == expected[table], table
    # The dossier exercises most index tables; an empty comparison would prove little.
    filled = [t for t in INDEX_TABLES if expected[t]]
    assert {"search_token", "search_string", "search_date", "search_reference",
            "search_quantity"} <= set(filled)
    # Stamping as `create`: meta first, version 1, the batch's time; the caller's dict intact.
    first = batched[0]
    assert first.content is not None
    assert list(first.content)[:3] == ["resourceType", "id", "meta"]
    assert first.content["meta"]["versionId"] == "1"
    assert first.content["meta"]["lastUpdated"] == "2026-11-22T12:34:56.789Z"
    assert "versionId" not in (items[0][2].get("meta") or {})


def test_org_scoping(services: Services) -> None:
    items = [("Patient", "p1", patient()), ("ValueSet", "vs1", {
        "resourceType": "ValueSet", "status": "draft"})]
    with services.db.write() as conn:
        stored = services.store(conn, TEST_ORG).create_many(items)
    assert [s.org for s in stored] == [TEST_ORG, None]  # shared types belong to no one
    with services.db.read() as conn:
        orgs = dict(conn.execute(text("SELECT id, org FROM resource")).all())
        version_orgs = dict(conn.execute(text("SELECT id, org FROM resource_version")).all())
        index_orgs = set(conn.execute(text(
            "SELECT r.id, x.org FROM search_string x JOIN resource r ON r.pk = x.resource_pk"
        )).all())
        assert services.store(conn, OTHER_ORG).current("Patient", "p1") is None
        assert services.store(conn, OTHER_ORG).current("ValueSet", "vs1") is not None
    assert orgs == version_orgs == {"p1": TEST_ORG, "vs1": None}
    assert ("p1", TEST_ORG) in index_orgs
    with services.db.write() as conn:
        unscoped = services.store(conn).create_many([("Patient", "p2", patient())])
    assert unscoped[0].org is None


def test_seq_and_pk_follow_item_order(services: Services) -> None:
    items = dossier()
    with services.db.write() as conn:
        store = services.store(conn, TEST_ORG)
        store.create("Patient", "before", patient())
        stored = store.create_many(items)
        after = store.create("Patient", "after", patient())
    seqs = [s.seq for s in stored]
    pks = [s.pk for s in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert pks == sorted(pks) and len(set(pks)) == len(pks)
    assert after.seq > seqs[-1]
    assert [(s.type, s.id) for s in stored] == [(t, i) for t, i, _ in items]
    with services.db.read() as conn:
        in_db = conn.execute(text(
            "SELECT seq, type, id, resource_pk FROM resource_version ORDER BY seq")).all()
    assert [(r.type, r.id) for r in in_db][1:-1] == [(t, i) for t, i, _ in items]
    assert [(r.seq, r.resource_pk) for r in in_db][1:-1] == list(zip(seqs, pks, strict=True))


def test_conflict_names_the_first_conflicting_resource(services: Services) -> None:
    with services.db.write() as conn:
        services.store(conn, TEST_ORG).create("Patient", "taken", patient())
        # Another organisation's resource takes the id too: ids are unique server-wide.
        services.store(conn, OTHER_ORG).create("Patient", "elsewhere", patient())

    cases = [
        ([("Patient", "a", patient()), ("Patient", "taken", patient()),
          ("Patient", "elsewhere", patient())], "Patient/taken"),
        ([("Patient", "a", patient()), ("Patient", "elsewhere", patient())],
         "Patient/elsewhere"),
        ([("Patient", "a", patient()), ("Patient", "b", patient()),
          ("Patient", "a", patient())], "Patient/a"),
        ([("Patient", "a", patient()), ("Patient", "a", patient()),
          ("Patient", "taken", patient())], "Patient/a"),
    ]
    for items, named in cases:
        with services.db.engine.connect() as conn:
            if services.db.dialect == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin() as tx:
                with pytest.raises(VersionConflict, match=named):
                    services.store(conn, TEST_ORG).create_many(items)
                # No failed statement: the transaction can still be used (PostgreSQL aborts
                # a transaction on an error).
                assert conn.execute(text("SELECT count(*) FROM resource")).scalar_one() >= 2
                tx.rollback()
    with services.db.write() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource")).scalar_one() == 2
        # A conflict with `create` reads the same way.
        with pytest.raises(VersionConflict, match="Patient/taken") as single:
            services.store(conn, TEST_ORG).create("Patient", "taken", patient())
    with services.db.write() as conn, pytest.raises(VersionConflict) as batch:
        services.store(conn, TEST_ORG).create_many([("Patient", "taken", patient())])
    assert str(batch.value) == str(single.value)


def test_empty_batch(services: Services) -> None:
    with services.db.write() as conn:
        assert services.store(conn, TEST_ORG).create_many([]) == []


def test_search_finds_batch_created_resources(services: Services) -> None:
    items = [("Patient", "kind", patient(family="Batchelor")),
             *[("Observation", f"obs-{n}", observation("Patient/kind", 50.0 + n))
               for n in range(5)]]
    with services.db.write() as conn:
        services.store(conn, TEST_ORG).create_many(items)
    with fhir_client(services) as client:
        found = client.get("/fhir/Observation", params={"subject": "Patient/kind",
                                                         "value-quantity": "gt52"}).json()
        assert sorted(e["resource"]["id"] for e in found["entry"]) == ["obs-3", "obs-4"]
        found = client.get("/fhir/Patient", params={"family": "batch"}).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == ["kind"]
        read = client.get("/fhir/Patient/kind")
        assert read.status_code == 200 and read.headers["etag"] == 'W/"1"'
        history = client.get("/fhir/Patient/kind/_history").json()
        assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
        # Updating a batch-created resource works as for any other.
        upd = {**read.json(), "gender": "female"}
        assert client.put("/fhir/Patient/kind", json=upd).status_code == 200
    with fhir_client(services, org=OTHER_ORG) as other:
        found = other.get("/fhir/Observation", params={"subject": "Patient/kind"}).json()
        assert found.get("entry", []) == []


def test_batch_larger_than_a_chunk(services: Services) -> None:
    """More items than `BATCH_CHUNK`: several statements on PostgreSQL."""
    n = 2 * BATCH_CHUNK + 37
    items = [("Patient", f"p{i}", patient(family=f"Fam{i:05d}", bsn=None)) for i in range(n)]
    with services.db.write() as conn:
        store = services.store(conn, TEST_ORG)
        stored = store.create_many(items)
        expected_index = sum(len(rows) for s in stored
                             for rows in store._index_rows(s.content).values())
    assert [s.id for s in stored] == [i for _, i, _ in items]
    seqs = [s.seq for s in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == n
    with services.db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource")).scalar_one() == n
        assert conn.execute(text("SELECT count(*) FROM resource_version")).scalar_one() == n
        indexed = sum(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                      for t in INDEX_TABLES)
    assert indexed == expected_index
    with fhir_client(services) as client:
        last = client.get("/fhir/Patient", params={"family": f"Fam{n - 1:05d}"}).json()
        assert [e["resource"]["id"] for e in last["entry"]] == [f"p{n - 1}"]

    # A conflict in a later chunk names that item.
    more = [("Patient", f"q{i}", patient(bsn=None)) for i in range(BATCH_CHUNK + 5)]
    more.append(("Patient", f"p{n - 1}", patient(bsn=None)))
    with (services.db.engine.connect() as conn, conn.begin(),
          pytest.raises(VersionConflict, match=f"Patient/p{n - 1} ")):
        services.store(conn, TEST_ORG).create_many(more)
