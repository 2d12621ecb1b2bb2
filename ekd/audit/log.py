"""The audit log: append-only, hash-chained per organisation (NEN 7513).

Each record's `hash` is sha256 over the previous record's hash of the same organisation
(`prev_hash`; the first record starts from `GENESIS`), the canonical JSON (RFC 8785) of the
stored AuditEvent and the canonical JSON of its patient rows, BSN included. Editing a record,
a patient row or a column, removing a record or reordering records breaks the chain, and
`verify` says where. Someone who can rewrite the whole tail of a chain *and* its head can hide
that; against that, keep the head hashes `ekd audit verify` prints somewhere else.

`append` runs in the caller's write transaction, so a write and its audit record commit or
roll back together, and a failure to audit fails the request. The chain stays linear because
appending locks the organisation's `audit_head` row:

* PostgreSQL: one statement locks the head row (`SELECT ... FOR UPDATE` in a CTE), hashes
  the records on from it, inserts them and their patient rows and moves the head: one round
  trip (two more, once per organisation, to create the head row).
* SQLite: there is one writer at a time. The head upsert is itself a write, so it takes the
  database write lock if the transaction does not hold it yet; `Database.write()` (BEGIN
  IMMEDIATE) holds it from the start, which avoids a failure to upgrade a read snapshot that
  another writer has overtaken (SQLITE_BUSY_SNAPSHOT fails the request, it never forks the
  chain). Call `append` in a write transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import orjson
import rfc8785
from sqlalchemy import Connection, func, select, text

from ekd.audit.event import indexed, instant, patient_references, to_audit_event
from ekd.audit.record import AuditRecord
from ekd.store.resources import sqlite_time
from ekd.store.schema import audit_event, audit_head, audit_patient

#: prev_hash of an organisation's first record.
GENESIS = "0" * 64
#: Records per batch when streaming through the log.
BATCH = 2000
_MAX_SAFE_INT = 2**53 - 1


# -- hashing ---------------------------------------------------------------------------------


def _plain(value: Any) -> bool:
    """Whether orjson's sorted output is byte-for-byte RFC 8785 for `value`.

    It is for strings (both escape only `"`, `\\` and control characters, with the same
    short forms and lowercase `\\u00xx`; both write other characters as UTF-8), booleans,
    null and integers a double holds exactly. It can differ for floats (number formatting)
    and for non-ASCII keys (RFC 8785 sorts by UTF-16 code units, orjson by code points).
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            if type(item) is not str and not _plain(item):
                return False
        return True
    if kind is list:
        for item in value:  # noqa: SIM110 (a loop: all() over a generator is 3x slower)
            if type(item) is not str and not _plain(item):
                return False
        return True
    if kind is int:
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    return False


def canonical(value: Any, *, plain: bool = False) -> bytes:
    """RFC 8785 canonical JSON.

    rfc8785 (pure Python) costs ~100 us for one AuditEvent, on every audited request; orjson
    with sorted keys gives the same bytes in ~2 us for the values AuditEvents hold (checked
    by `_plain`, and against rfc8785 in the tests), so it serves those and rfc8785 the rest.
    `plain=True` skips the check, for values built by `to_audit_event` and `patient_rows`:
    ASCII keys, and strings, booleans and lists only.
    """
    if plain or _plain(value):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(value)


def patient_rows(org: str, patients: Iterable[tuple[str, str | None]]) -> list[dict]:
    """The patient rows as hashed: sorted, so that the order rows come back in is no matter."""
    return sorted(({"org": org, "patient": p, "bsn": b} for p, b in patients),
                  key=lambda r: (r["patient"], r["bsn"] or ""))


def chain_hash(prev_hash: str, content: dict | bytes, patients: list[dict]) -> str:
    """The record's hash; `content` as a dict, or already canonical bytes."""
    h = hashlib.sha256(prev_hash.encode())
    h.update(content if isinstance(content, bytes) else canonical(content))
    h.update(canonical(patients))
    return h.hexdigest()


# -- appending -------------------------------------------------------------------------------


def append(conn: Connection, records: Sequence[AuditRecord]) -> list[str]:
    """Store `records` in the caller's (write) transaction; their AuditEvent ids, in order.

    Records of several organisations may come together; each organisation's chain is locked
    in org order (no deadlock between two such batches).
    """
    ids = [str(uuid.uuid4()) for _ in records]
    by_org: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_org.setdefault(record.principal.org, []).append(i)
    postgresql = conn.dialect.name == "postgresql"
    for org in sorted(by_org):
        items = [(records[i], ids[i]) for i in by_org[org]]
        if postgresql:
            _append_postgresql(conn, org, items)
        else:
            _append_sqlite(conn, org, items)
    return ids


def _build(org: str, items: list[tuple[AuditRecord, str]]) -> list[dict]:
    """Per record: its columns, the canonical JSON of its AuditEvent (hashed, and stored as
    is) and of its patient rows (hashed), and the patient rows."""
    out = []
    for record, id in items:
        content = to_audit_event(record, id)
        rows = patient_rows(org, ((p.reference, p.bsn) for p in record.patients))
        out.append({**indexed(content), "json": canonical(content, plain=True),
                    "patients_json": canonical(rows, plain=True), "rows": rows})
    return out


def _link(prev: str, events: list[dict]) -> str:
    """Set each event's prev_hash and hash; the new head hash."""
    for e in events:
        e["prev_hash"] = prev
        h = hashlib.sha256(prev.encode())
        h.update(e["json"])
        h.update(e["patients_json"])
        prev = e["hash"] = h.hexdigest()
    return prev


#: One round trip: lock the head, hash the chain on from it (sha256 over the same bytes as
#: `chain_hash`: the text concatenation of prev hash and canonical JSONs, UTF-8 encoded),
#: insert the records in chain order (ORDER BY n before nextval: pk order is chain order),
#: their patient rows, and move the head. Under READ COMMITTED, FOR UPDATE returns the head
#: as the previous lock holder committed it, so a concurrent append chains on, never forks.
#: No head row (an organisation's first record): nothing is inserted and the count is 0.
_PG_APPEND = text("""
WITH RECURSIVE head AS (
    SELECT hash FROM audit_head WHERE org = :org FOR UPDATE
), x AS (
    SELECT * FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS x(
        n int, id text, org text, recorded timestamptz, action text, subtype text,
        outcome text, user_id text, client_id text, content text, patients text)
), chain AS (
    SELECT x.n, head.hash::text AS prev_hash,
           encode(sha256(convert_to(head.hash || x.content || x.patients, 'UTF8')), 'hex')
               AS hash
    FROM head CROSS JOIN x WHERE x.n = 0
    UNION ALL
    SELECT x.n, chain.hash,
           encode(sha256(convert_to(chain.hash || x.content || x.patients, 'UTF8')), 'hex')
    FROM chain JOIN x ON x.n = chain.n + 1
), ev AS (
    INSERT INTO audit_event (id, org, recorded, action, subtype, outcome, user_id, client_id,
                             content, prev_hash, hash)
    SELECT x.id, x.org, x.recorded, x.action, x.subtype, x.outcome, x.user_id, x.client_id,
           CAST(x.content AS jsonb), chain.prev_hash, chain.hash
    FROM x JOIN chain ON chain.n = x.n
    ORDER BY x.n
    RETURNING pk, id
), pat AS (
    INSERT INTO audit_patient (audit_pk, org, patient, bsn)
    SELECT ev.pk, p.org, p.patient, p.bsn
    FROM jsonb_to_recordset(CAST(:patients AS jsonb))
         AS p(id text, org text, patient text, bsn text)
    JOIN ev ON ev.id = p.id
), moved AS (
    UPDATE audit_head
    SET last_pk = (SELECT max(pk) FROM ev),
        hash = (SELECT hash FROM chain ORDER BY n DESC LIMIT 1)
    WHERE org = :org AND EXISTS (SELECT 1 FROM ev)
)
SELECT count(*) FROM ev
""")


def _append_postgresql(conn: Connection, org: str, items: list[tuple[AuditRecord, str]]
                       ) -> None:
    built = _build(org, items)
    events = [{"n": n, "id": e["id"], "org": e["org"], "recorded": e["recorded"].isoformat(),
               "action": e["action"], "subtype": e["subtype"], "outcome": e["outcome"],
               "user_id": e["user_id"], "client_id": e["client_id"],
               "content": e["json"].decode(), "patients": e["patients_json"].decode()}
              for n, e in enumerate(built)]
    patients = [{"id": e["id"], **row} for e in built for row in e["rows"]]
    params = {"events": orjson.dumps(events).decode(),
              "patients": orjson.dumps(patients).decode(), "org": org}
    if conn.execute(_PG_APPEND, params).scalar_one() == len(events):
        return
    conn.execute(text("INSERT INTO audit_head (org, last_pk, hash) VALUES (:org, 0, :g) "
                      "ON CONFLICT (org) DO NOTHING"), {"org": org, "g": GENESIS})
    inserted = conn.execute(_PG_APPEND, params).scalar_one()
    if inserted != len(events):
        raise RuntimeError(f"audit: {inserted} of {len(events)} records appended")


_SQLITE_HEAD = (
    "INSERT INTO audit_head (org, last_pk, hash) VALUES (?, 0, ?) "
    "ON CONFLICT (org) DO UPDATE SET org = excluded.org RETURNING hash")
_SQLITE_EVENT = (
    "INSERT INTO audit_event (id, org, recorded, action, subtype, outcome, user_id, client_id, "
    "content, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SQLITE_PATIENT = "INSERT INTO audit_patient (audit_pk, org, patient, bsn) VALUES (?, ?, ?, ?)"
_SQLITE_MOVE_HEAD = "UPDATE audit_head SET last_pk = ?, hash = ? WHERE org = ?"


def _append_sqlite(conn: Connection, org: str, items: list[tuple[AuditRecord, str]]) -> None:
    # The sqlite3 cursor of the caller's transaction: in-process statements cost less than
    # SQLAlchemy's compile-and-bind around them (~0.1 ms each).
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        prev = cur.execute(_SQLITE_HEAD, (org, GENESIS)).fetchone()[0]
        events = _build(org, items)
        head = _link(prev, events)
        patients = [{"id": e["id"], **row} for e in events for row in e["rows"]]
        pks: dict[str, int] = {}
        for e in events:
            cur.execute(_SQLITE_EVENT, (
                e["id"], e["org"], sqlite_time(e["recorded"]), e["action"], e["subtype"],
                e["outcome"], e["user_id"], e["client_id"], e["json"].decode(), e["prev_hash"],
                e["hash"]))
            pks[e["id"]] = cur.lastrowid  # type: ignore[assignment]
        if patients:
            cur.executemany(_SQLITE_PATIENT, [(pks[p["id"]], p["org"], p["patient"], p["bsn"])
                                              for p in patients])
        cur.execute(_SQLITE_MOVE_HEAD, (pks[events[-1]["id"]], head, org))
    finally:
        cur.close()


# -- verifying -------------------------------------------------------------------------------

#: Kinds of problem `verify` reports.
ALTERED = "altered"  # content, or a patient's BSN, differs from what was hashed
PATIENTS = "patients"  # patient rows removed, added or pointed at another patient
COLUMNS = "columns"  # an indexed column disagrees with the hashed AuditEvent
GAP = "gap"  # prev_hash is not the previous record's hash: missing, reordered or relinked
HEAD = "head"  # the head does not point at the newest record: the tail was removed


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    #: The record where it shows (None: the head itself).
    pk: int | None
    id: str | None
    #: What is wrong, for people. Never carries a value of the record (no BSN, no content).
    detail: str


@dataclass(slots=True)
class OrgReport:
    org: str
    checked: int = 0
    last_pk: int | None = None
    #: The hash of the newest record, as the head has it: keep it outside the database to
    #: detect a rewrite of the whole tail later.
    head_hash: str | None = None
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass(slots=True)
class VerifyReport:
    orgs: dict[str, OrgReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.orgs.values())

    @property
    def checked(self) -> int:
        return sum(r.checked for r in self.orgs.values())


class _Chain:
    """Where one organisation's chain stands while streaming."""

    __slots__ = ("last_hash", "max_problems", "report")

    def __init__(self, org: str, max_problems: int) -> None:
        self.report = OrgReport(org)
        self.last_hash = GENESIS
        self.max_problems = max_problems

    def problem(self, kind: str, pk: int | None, id: str | None, detail: str) -> None:
        self.report.problem_count += 1
        if len(self.report.problems) < self.max_problems:
            self.report.problems.append(Problem(kind, pk, id, detail))


_COLUMNS = ("id", "org", "recorded", "action", "subtype", "outcome", "user_id", "client_id")


def count(conn: Connection, org: str | None = None) -> int:
    q = select(func.count()).select_from(audit_event)
    if org is not None:
        q = q.where(audit_event.c.org == org)
    return int(conn.execute(q).scalar_one())


def verify(conn: Connection, org: str | None = None, *, batch: int = BATCH,
           max_problems: int = 100, progress: Callable[[int], None] | None = None
           ) -> VerifyReport:
    """Check every chain (or `org`'s) from genesis to head.

    Streams in pk order, `batch` records at a time, so memory stays flat however long the
    log. Run it in one snapshot (`verify_database` does: REPEATABLE READ on PostgreSQL), or
    records appended while it runs may look like a head mismatch. After a problem the check
    continues from the stored hash, so one edit is reported once, not for every later record.
    `progress` gets the number of records checked so far.
    """
    head_q = select(audit_head.c.org, audit_head.c.last_pk, audit_head.c.hash)
    if org is not None:
        head_q = head_q.where(audit_head.c.org == org)
    heads = {r.org: (r.last_pk, r.hash) for r in conn.execute(head_q)}
    chains: dict[str, _Chain] = {}
    cols = [audit_event.c[name] for name in (*_COLUMNS, "pk", "content", "prev_hash", "hash")]
    last = 0
    done = 0
    while True:
        q = select(*cols).where(audit_event.c.pk > last).order_by(audit_event.c.pk).limit(batch)
        if org is not None:
            q = q.where(audit_event.c.org == org)
        rows = conn.execute(q).all()
        if not rows:
            break
        patients: dict[int, list[tuple[str, str, str | None]]] = {}
        pq = select(audit_patient.c.audit_pk, audit_patient.c.org, audit_patient.c.patient,
                    audit_patient.c.bsn).where(audit_patient.c.audit_pk.between(rows[0].pk,
                                                                             rows[-1].pk))
        for p in conn.execute(pq):
            patients.setdefault(p.audit_pk, []).append((p.org, p.patient, p.bsn))
        for row in rows:
            chain = chains.get(row.org)
            if chain is None:
                chain = chains[row.org] = _Chain(row.org, max_problems)
            _check(chain, row, patients.get(row.pk, []))
        last = rows[-1].pk
        done += len(rows)
        if progress is not None:
            progress(done)
    report = VerifyReport()
    for name in sorted(set(heads) | set(chains)):
        chain = chains.get(name) or _Chain(name, max_problems)
        _check_head(chain, heads.get(name))
        report.orgs[name] = chain.report
    return report


def _check(chain: _Chain, row: Any, patients: list[tuple[str, str, str | None]]) -> None:
    r = chain.report
    r.checked += 1
    if row.prev_hash != chain.last_hash:
        if r.last_pk is None:
            why = ("the organisation's first record does not start the chain: records before "
                   "it are missing")
        else:
            why = (f"does not follow record pk {r.last_pk}: a record between them is missing, "
                   "or records were reordered or relinked")
        chain.problem(GAP, row.pk, row.id, why)
    content = row.content
    rows = [{"org": o, "patient": p, "bsn": b} for o, p, b in patients]
    rows.sort(key=lambda x: (x["patient"], x["bsn"] or ""))
    if not isinstance(content, dict) or chain_hash(row.prev_hash, content, rows) != row.hash:
        try:
            expected = sorted(patient_references(content))
        except Exception:
            expected = None
        if expected is not None and expected != sorted(x["patient"] for x in rows):
            chain.problem(PATIENTS, row.pk, row.id,
                          "patient rows were removed, added or changed after recording")
        elif expected is not None and any(x["org"] != row.org for x in rows):
            chain.problem(PATIENTS, row.pk, row.id, "a patient row was moved to another "
                          "organisation after recording")
        else:
            chain.problem(ALTERED, row.pk, row.id,
                          "the AuditEvent or a patient's BSN was changed after recording")
    else:
        wrong = _wrong_columns(row)
        if wrong:
            chain.problem(COLUMNS, row.pk, row.id, f"column {', '.join(wrong)} differs from "
                          "the recorded AuditEvent")
    chain.last_hash = row.hash
    r.last_pk = row.pk


def _wrong_columns(row: Any) -> list[str]:
    try:
        derived = indexed(row.content)
    except Exception:
        return ["content"]
    wrong = []
    for name in _COLUMNS:
        value = getattr(row, name)
        if name == "recorded":
            value = instant(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
            if value != instant(derived[name]):
                wrong.append(name)
        elif value != derived[name]:
            wrong.append(name)
    return wrong


def _check_head(chain: _Chain, head: tuple[int, str] | None) -> None:
    r = chain.report
    if head is None:
        if r.last_pk is not None:
            chain.problem(HEAD, None, None, "the organisation's head row is missing")
        return
    last_pk, head_hash = head
    r.head_hash = head_hash
    if r.last_pk is None:
        if last_pk != 0 or head_hash != GENESIS:
            chain.problem(HEAD, None, None, f"the head points at record pk {last_pk}, but the "
                          "organisation has no records: they were removed")
        return
    if head_hash != chain.last_hash or last_pk != r.last_pk:
        if last_pk > r.last_pk:
            why = (f"the newest records are missing: the head points at pk {last_pk}, the "
                   f"last record is pk {r.last_pk}")
        else:
            why = f"the head (pk {last_pk}) does not match the newest record (pk {r.last_pk})"
        chain.problem(HEAD, None, None, why)


def verify_database(db: Any, org: str | None = None, *,
                    progress: Callable[[int], None] | None = None) -> VerifyReport:
    """`verify` in one read-only snapshot of `db` (an `ekd.store.database.Database`)."""
    with db.engine.connect() as conn:
        if db.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                          postgresql_readonly=True)
        with conn.begin():
            return verify(conn, org, progress=progress)
