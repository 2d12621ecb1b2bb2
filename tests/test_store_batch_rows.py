"""The index rows in the database are exactly the indexer's rows, on both backends.

The store writes the indexer's row tuples (`Indexer.table_rows`) as they are: on SQLite
appended with (pk, type, org) and bound positionally, on PostgreSQL sent as JSON arrays whose
values the statement takes by position. Both depend on the tuples' order being the columns'
(`ekd.search.index.COLUMNS`) and on each value reaching its column unchanged. Here the rows
read back from the database are compared with the indexer's rows as dicts (the form that
names every column), for `create` and `create_many` alike, on content chosen to carry what a
conversion could alter: the far past and far future, fractions and tiny or large numbers,
quotes, backslashes, non-ASCII text, parameter name suffixes, nulls.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, text

from ekd.interaction.base import Services
from ekd.jgz.demo import generate
from ekd.search.index import COLUMNS, Indexer, normalise
from ekd.store.resources import Stored, sqlite_time
from ekd.store.schema import INDEX_TABLES
from tests.app_helpers import TEST_ORG
from tests.fhir_helpers import observation, patient

ODD = 'Ézra "quoted" \\ back\\slash \'single\' ünïcødé 𝄞 tab\there'


def odd_resources() -> list[tuple[str, str, dict]]:
    """Content whose index values a conversion could get wrong."""
    obs = observation("Patient/odd-patient", 0.1)
    obs["code"] = {"coding": [{"system": "http://loinc.org", "code": "8302-2",
                               "display": ODD}], "text": "Lengte \\ "}
    obs["effectivePeriod"] = {"start": "0001-01-01"}
    del obs["effectiveDateTime"]
    obs["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 1e-7, "unit": "mm", "system": "http://unitsofmeasure.org",
                           "code": "mm"}},
        {"code": {"text": ODD},
         "valueQuantity": {"value": 123456789.123456, "unit": "kg",
                           "system": "http://unitsofmeasure.org", "code": "kg"}},
        {"code": {"coding": [{"code": "no-system"}]}, "valueString": ODD},
        {"code": {"coding": [{"system": "urn:x", "code": "period"}]},
         "valuePeriod": {"end": "9999-12-31T23:59:59Z"}},
    ]
    obs["performer"] = [{"identifier": {"system": "urn:oid:2.16.528.1.1007.3.1",
                                        "value": "O'Brien\\1"}},
                        {"reference": "https://other.example/fhir/Practitioner/p-1"}]
    pat = patient(family=ODD, bsn="999999151")
    pat["identifier"].append({"type": {"coding": [{"system": "urn:t", "code": "MR"}],
                                       "text": ODD}, "value": "mr-1"})
    pat["telecom"] = [{"system": "phone", "value": "+31 (0)6 1234 5678"},
                      {"system": "email", "value": "a\"b@example.org"}]
    pat["address"] = [{"line": ["Straße 1", "  spaced   out  "], "city": "'s-Hertogenbosch",
                       "postalCode": "1234 AB"}]
    pat["deceasedDateTime"] = "2024-02-29T23:59:59.999+14:00"
    return [("Patient", "odd-patient", pat), ("Observation", "odd-obs", obs)]


def dossier_sample() -> list[tuple[str, str, dict]]:
    """The first resources of a demo dossier: every type of a child's Bundle."""
    bundle = next(generate(1, seed=5))
    return [(e["resource"]["resourceType"], f"d-{n}", e["resource"])
            for n, e in enumerate(bundle["entry"][:60])]


def stored_rows(conn: Connection) -> dict[tuple[str, str], dict[str, list[tuple]]]:
    """Index rows per resource and table, as read back (without pk, type and org)."""
    out: dict[tuple[str, str], dict[str, list[tuple]]] = {}
    for table in INDEX_TABLES:
        columns = ", ".join(f"x.{c}" for c in COLUMNS[table])
        for row in conn.execute(text(
                f"SELECT r.type, r.id, x.type, x.org, r.org, {columns} FROM {table} x "
                "JOIN resource r ON r.pk = x.resource_pk")):
            rtype, rid, xtype, xorg, rorg, *values = row
            assert (xtype, xorg) == (rtype, rorg)
            out.setdefault((rtype, rid), {}).setdefault(table, []).append(
                tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in values))
    return out


def expected_rows(indexer: Indexer, stored: list[Stored], sqlite: bool
                  ) -> dict[tuple[str, str], dict[str, list[tuple]]]:
    """The indexer's rows as dicts (column by column), in the form the database returns."""
    def value(v: object) -> object:
        if isinstance(v, datetime):  # SQLite keeps text; PostgreSQL answers in its zone
            return sqlite_time(v) if sqlite else v.astimezone(UTC)
        return v

    out: dict[tuple[str, str], dict[str, list[tuple]]] = {}
    for s in stored:
        assert s.content is not None
        for table, rows in indexer(s.content).items():
            out.setdefault((s.type, s.id), {})[table] = [
                tuple(value(row[c]) for c in COLUMNS[table]) for row in rows]
    return out


def test_columns_are_the_tables_columns() -> None:
    for table, t in INDEX_TABLES.items():
        assert COLUMNS[table] == tuple(
            c.name for c in t.columns if c.name not in ("resource_pk", "type", "org")), table


def test_table_rows_name_their_values_by_columns(services: Services) -> None:
    indexer = Indexer(services.search.parameters)
    for _, _, content in odd_resources() + dossier_sample():
        rows = indexer.table_rows(content)
        assert {table: [dict(zip(COLUMNS[table], row, strict=True)) for row in table_rows]
                for table, table_rows in rows.items()} == indexer(content)
    patient_rows = indexer(odd_resources()[0][2])
    assert {"param": "identifier:of-type", "system": "urn:t", "code": "MR|mr-1",
            "text": None} in patient_rows["search_token"]
    assert {"param": "identifier", "system": None, "code": "mr-1", "text": normalise(ODD)
            } in patient_rows["search_token"]


@pytest.mark.parametrize("way", ["create", "create_many"])
def test_stored_rows_are_the_indexers_rows(services: Services, way: str) -> None:
    items = odd_resources() + dossier_sample()
    with services.db.write() as conn:
        store = services.store(conn, TEST_ORG)
        if way == "create":
            stored = [store.create(t, i, c, method="PUT") for t, i, c in items]
        else:
            stored = store.create_many(items)
    with services.db.read() as conn:
        got = stored_rows(conn)
    want = expected_rows(Indexer(services.search.parameters, fast=False), stored,
                         services.db.dialect == "sqlite")
    assert set(got) == set(want)
    for key in want:
        for table in INDEX_TABLES:
            assert sorted(map(repr, got[key].get(table, []))) == sorted(
                map(repr, want[key].get(table, []))), (key, table)
    # The odd values made it into the comparison.
    odd = want[("Observation", "odd-obs")]
    lows = [row[1] for row in odd["search_date"]]
    assert any(str(low).startswith("0001-01-01") for low in lows)
    assert any(row[3] == 1e-7 for row in odd["search_quantity"])
    assert any(row[0].endswith(":identifier") for row in odd["search_token"])


def test_a_store_outside_a_transaction_writes_in_one(services: Services) -> None:
    """The SQLite statements run on the driver's cursor: they must still be inside the
    SQLAlchemy transaction (which begins with the first statement) and so roll back."""
    with services.db.engine.connect() as conn:
        store = services.store(conn, TEST_ORG)
        store.create("Patient", "rolled-back", patient())
        store.create_many([("Patient", "rolled-back-too", patient())])
        assert conn.in_transaction()
        conn.rollback()
    with services.db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM search_token")).scalar_one() == 0
