"""The six searches of the benchmark: how their parameters are drawn, the FHIR URL ekd (and the
sekmet-fhir peer) is asked, and the same question as hand-written SQL on ekd's index tables.

Parameters are drawn at random (fixed seed) from the loaded data, so every request asks for
something that exists and consecutive requests do not hit the same rows: a BSN of a stored
child, a child who has height measurements, the month of a stored Encounter, the birth month of
a stored child, a child whose dossier holds about 150 resources, a LOINC code in use.

The SQL "floor" is what a developer who knows the schema would write by hand for the same
question, returning what the server has to return: the current content of the matching
resources (as text, no JSON decoding) and, where ekd reports a total beyond the page, the count.
It is run through psycopg with server-side prepared statements, so it shows what the database
itself needs for the answer; ekd's figure over it is the cost of its query compiler, of the
Python layer, of Bundle rendering and of HTTP.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

BSN = "http://fhir.nl/fhir/NamingSystem/bsn"
LOINC = "http://loinc.org"
BODY_HEIGHT = "8302-2"
#: Dossier sizes (compartment members) that count as "a child with ~150 resources".
EVERYTHING_SIZE = (135, 165)

Params = dict[str, Any]

#: The current content of a resource, as text (the floor does not decode JSON).
CONTENT = ("SELECT rv.content::text FROM resource r JOIN resource_version rv "
           "ON rv.resource_pk = r.pk AND rv.version = r.version ")


@dataclass(frozen=True)
class FloorStatement:
    sql: str
    #: Run only when the page is full (ekd then counts the total, as it does).
    only_if_full_page: int | None = None


@dataclass(frozen=True)
class Query:
    key: str
    title: str
    #: p95 target for ekd, ms; None: no target (report only).
    target_p95_ms: float | None
    #: (sampling connection, rng, n) -> n parameter sets.
    sample: Callable[[Any, random.Random, int], list[Params]]
    #: parameters -> path and query string relative to the FHIR base.
    path: Callable[[Params], str]
    #: Hand-written SQL on ekd's tables (psycopg named placeholders).
    floor: tuple[FloorStatement, ...]
    #: parameters -> the floor's bind values.
    floor_params: Callable[[Params], Params]
    #: What is in the EXPLAIN section (queries 1-5).
    explain: bool = True
    #: Matches per page ekd returns (the floor fetches one more, to know if there are more).
    page_size: int | None = None
    notes: list[str] = field(default_factory=list)


def _q(path: str, params: list[tuple[str, str]]) -> str:
    return f"{path}?{urlencode(params, safe='|/:')}" if params else path


def _draw(rng: random.Random, pool: list, n: int) -> list:
    """n values from `pool`: without repetition when it is large enough."""
    if not pool:
        raise RuntimeError("nothing in the database to draw parameters from")
    if len(pool) >= n:
        return rng.sample(pool, n)
    return [rng.choice(pool) for _ in range(n)]


def _rows(conn: Any, sql: str, **params: Any) -> list[tuple]:
    from sqlalchemy import text

    return [tuple(r) for r in conn.execute(text(sql), params)]


def _month(d: dt.date) -> tuple[dt.date, dt.date]:
    first = d.replace(day=1)
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    return first, nxt


def _as_date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v)[:10])


def _utc(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


# -- 1. Patient by BSN -------------------------------------------------------------------------


def _sample_bsn(conn: Any, rng: random.Random, n: int) -> list[Params]:
    rows = _rows(conn, "SELECT code FROM search_token WHERE type = 'Patient' AND "
                       "param = 'identifier' AND system = :s ORDER BY code", s=BSN)
    return [{"bsn": r[0]} for r in _draw(rng, rows, n)]


Q1 = Query(
    "q1", "Patient?identifier=bsn|…", 10.0, _sample_bsn,
    lambda p: _q("Patient", [("identifier", f"{BSN}|{p['bsn']}")]),
    (FloorStatement(CONTENT + "WHERE r.pk IN (SELECT resource_pk FROM search_token WHERE "
                    "type = 'Patient' AND param = 'identifier' AND system = %(system)s AND "
                    "code = %(code)s) AND r.type = 'Patient' AND NOT r.deleted "
                    "ORDER BY r.pk LIMIT 51"),),
    lambda p: {"system": BSN, "code": p["bsn"]},
    page_size=50,
)


# -- 2. a child's body heights, by date --------------------------------------------------------


def _sample_height_subjects(conn: Any, rng: random.Random, n: int) -> list[Params]:
    rows = _rows(conn, """
        SELECT DISTINCT s.target_id FROM search_reference s
        JOIN search_token c ON c.resource_pk = s.resource_pk AND c.type = 'Observation'
             AND c.param = 'code' AND c.system = :loinc AND c.code = :code
        WHERE s.type = 'Observation' AND s.param = 'subject' AND s.target_type = 'Patient'
        ORDER BY s.target_id""", loinc=LOINC, code=BODY_HEIGHT)
    return [{"patient": r[0]} for r in _draw(rng, rows, n)]


Q2 = Query(
    "q2", "Observation?subject=Patient/…&code=loinc|8302-2&_sort=date", 20.0,
    _sample_height_subjects,
    lambda p: _q("Observation", [("subject", f"Patient/{p['patient']}"),
                                 ("code", f"{LOINC}|{BODY_HEIGHT}"), ("_sort", "date")]),
    # the child's observations first (a few hundred at most), then their code and date: the
    # order a person who knows the data picks, fixed with MATERIALIZED so that the planner's
    # estimate for the correlated (type, param, code, system) columns cannot reorder it
    (FloorStatement(
        "WITH mine AS MATERIALIZED (SELECT resource_pk FROM search_reference "
        "  WHERE target_id = %(patient)s AND target_type = 'Patient' AND type = 'Observation' "
        "  AND param = 'subject' AND url IS NULL) "
        "SELECT rv.content::text FROM mine "
        "JOIN search_token c ON c.resource_pk = mine.resource_pk AND c.type = 'Observation' "
        "  AND c.param = 'code' AND c.system = %(system)s AND c.code = %(code)s "
        "JOIN resource r ON r.pk = mine.resource_pk AND NOT r.deleted "
        "JOIN resource_version rv ON rv.resource_pk = r.pk AND rv.version = r.version "
        "LEFT JOIN LATERAL (SELECT min(d.low) AS low FROM search_date d "
        "  WHERE d.resource_pk = mine.resource_pk AND d.type = 'Observation' "
        "  AND d.param = 'date') d ON true "
        "ORDER BY d.low, r.pk LIMIT 51"),),
    lambda p: {"system": LOINC, "code": BODY_HEIGHT, "patient": p["patient"]},
    page_size=50,
)


# -- 3. Encounters in a month -----------------------------------------------------------------


def _sample_encounter_months(conn: Any, rng: random.Random, n: int) -> list[Params]:
    # the month of a random stored Encounter: busy months are asked about more, as in practice
    rows = _rows(conn, "SELECT low FROM search_date WHERE type = 'Encounter' AND param = 'date' "
                       "ORDER BY resource_pk")
    out = []
    for (low,) in _draw(rng, rows, n):
        first, nxt = _month(_as_date(low))
        out.append({"from": first, "to": nxt})
    return out


#: The demo Encounters have `period.start` only (no end): an open-ended period, which FHIR
#: date search treats as lasting until the far future. `ge<first>&lt<next first>` therefore
#: matches every Encounter that started before the month ends (R4 search.html#prefix: ge/lt
#: are "the range above/below the search value intersects the target's range"), and ekd's total
#: counts them all. The floor asks exactly that (period overlaps the month). q3s asks what a
#: month report means with this data - Encounters that *started* in the month - as
#: `sa<last day of previous month>&lt<next first>`.
Q3 = Query(
    "q3", "Encounter?date=ge…&date=lt…&_count=50 (a month)", 50.0, _sample_encounter_months,
    lambda p: _q("Encounter", [("date", f"ge{p['from'].isoformat()}"),
                               ("date", f"lt{p['to'].isoformat()}"), ("_count", "50")]),
    (FloorStatement(CONTENT + "WHERE r.pk IN (SELECT resource_pk FROM search_date WHERE "
                    "type = 'Encounter' AND param = 'date' AND low < %(hi)s AND high > %(lo)s) "
                    "AND r.type = 'Encounter' AND NOT r.deleted ORDER BY r.pk LIMIT 51"),
     FloorStatement("SELECT count(DISTINCT resource_pk) FROM search_date WHERE "
                    "type = 'Encounter' AND param = 'date' AND low < %(hi)s AND high > %(lo)s",
                    only_if_full_page=51)),
    lambda p: {"lo": _utc(p["from"]), "hi": _utc(p["to"])},
    page_size=50,
    notes=["demo Encounters have period.start only (open-ended): ge/lt over a month matches "
           "every Encounter that started before the month's end (FHIR overlap semantics); "
           "q3s is the started-in-the-month variant"],
)

Q3S = Query(
    "q3s", "Encounter?date=sa…&date=lt…&_count=50 (started in a month)", 50.0,
    _sample_encounter_months,
    lambda p: _q("Encounter", [("date", f"sa{(p['from'] - dt.timedelta(days=1)).isoformat()}"),
                               ("date", f"lt{p['to'].isoformat()}"), ("_count", "50")]),
    (FloorStatement(CONTENT + "WHERE r.pk IN (SELECT resource_pk FROM search_date WHERE "
                    "type = 'Encounter' AND param = 'date' AND low >= %(lo)s AND low < %(hi)s) "
                    "AND r.type = 'Encounter' AND NOT r.deleted ORDER BY r.pk LIMIT 51"),
     FloorStatement("SELECT count(DISTINCT resource_pk) FROM search_date WHERE "
                    "type = 'Encounter' AND param = 'date' AND low >= %(lo)s AND low < %(hi)s",
                    only_if_full_page=51)),
    lambda p: {"lo": _utc(p["from"]), "hi": _utc(p["to"])},
    page_size=50,
)


# -- 4. the transfer cohort: children turning 4 next month ------------------------------------


def _sample_birth_months(conn: Any, rng: random.Random, n: int) -> list[Params]:
    # "turning 4 next month" for a run of different "todays": the birth month of a stored child
    rows = _rows(conn, "SELECT low FROM search_date WHERE type = 'Patient' AND "
                       "param = 'birthdate' ORDER BY resource_pk")
    out = []
    for (low,) in _draw(rng, rows, n):
        first, nxt = _month(_as_date(low))
        out.append({"from": first, "last": nxt - dt.timedelta(days=1)})
    return out


Q4 = Query(
    "q4", "Patient?birthdate=ge…&birthdate=le…&_count=1000 (turning 4)", 200.0,
    _sample_birth_months,
    lambda p: _q("Patient", [("birthdate", f"ge{p['from'].isoformat()}"),
                             ("birthdate", f"le{p['last'].isoformat()}"), ("_count", "1000")]),
    (FloorStatement(CONTENT + "WHERE r.pk IN (SELECT resource_pk FROM search_date WHERE "
                    "type = 'Patient' AND param = 'birthdate' AND low >= %(lo)s "
                    "AND high <= %(hi)s) AND r.type = 'Patient' AND NOT r.deleted "
                    "ORDER BY r.pk LIMIT 1001"),
     FloorStatement("SELECT count(DISTINCT resource_pk) FROM search_date WHERE "
                    "type = 'Patient' AND param = 'birthdate' AND low >= %(lo)s "
                    "AND high <= %(hi)s", only_if_full_page=1001)),
    lambda p: {"lo": _utc(p["from"]), "hi": _utc(p["last"] + dt.timedelta(days=1))},
    page_size=1000,
)


# -- 5. Patient/$everything --------------------------------------------------------------------


def _sample_dossiers(conn: Any, rng: random.Random, n: int) -> list[Params]:
    lo, hi = EVERYTHING_SIZE
    rows = _rows(conn, """
        SELECT target_id, count(DISTINCT resource_pk) FROM search_reference
        WHERE target_type = 'Patient' AND url IS NULL AND type <> 'Patient'
        GROUP BY target_id ORDER BY target_id""")
    fitting = [r for r in rows if lo <= r[1] <= hi]
    if not fitting:  # a tiny database: the largest dossiers there are
        fitting = sorted(rows, key=lambda r: -r[1])[:max(1, len(rows) // 4)]
    return [{"patient": r[0], "members": r[1]} for r in _draw(rng, fitting, n)]


Q5 = Query(
    "q5", "Patient/[id]/$everything (~150 resources)", 100.0, _sample_dossiers,
    lambda p: f"Patient/{p['patient']}/$everything",
    (FloorStatement(
        "WITH inside AS ("
        "  SELECT resource_pk AS pk FROM search_reference WHERE target_id = %(patient)s "
        "  AND target_type = 'Patient' AND url IS NULL "
        "  UNION SELECT pk FROM resource WHERE type = 'Patient' AND id = %(patient)s), "
        "outside AS ("
        "  SELECT r.pk FROM (SELECT DISTINCT target_type, target_id FROM search_reference "
        "    WHERE resource_pk IN (SELECT pk FROM inside) AND target_id IS NOT NULL "
        "    AND url IS NULL AND target_type <> 'Patient') t "
        "  JOIN resource r ON r.type = t.target_type AND r.id = t.target_id) "
        + CONTENT + "WHERE r.pk IN (SELECT pk FROM inside UNION SELECT pk FROM outside) "
        "AND NOT r.deleted ORDER BY r.pk"),),
    lambda p: {"patient": p["patient"]},
)


# -- 6. count of an Observation code -----------------------------------------------------------


def _sample_codes(conn: Any, rng: random.Random, n: int) -> list[Params]:
    rows = _rows(conn, "SELECT code, count(*) FROM search_token WHERE type = 'Observation' AND "
                       "param = 'code' AND system = :s GROUP BY code ORDER BY 2 DESC, 1",
                 s=LOINC)
    top = [r[0] for r in rows[:5]]
    return [{"code": c} for c in _draw(rng, top, n)]


Q6 = Query(
    "q6", "Observation?code=loinc|…&_summary=count", None, _sample_codes,
    lambda p: _q("Observation", [("code", f"{LOINC}|{p['code']}"), ("_summary", "count")]),
    (FloorStatement("SELECT count(*) FROM search_token t JOIN resource r ON r.pk = "
                    "t.resource_pk WHERE t.type = 'Observation' AND t.param = 'code' AND "
                    "t.system = %(system)s AND t.code = %(code)s AND NOT r.deleted"),),
    lambda p: {"system": LOINC, "code": p["code"]},
    explain=False,
)

QUERIES: tuple[Query, ...] = (Q1, Q2, Q3, Q3S, Q4, Q5, Q6)
BY_KEY = {q.key: q for q in QUERIES}
