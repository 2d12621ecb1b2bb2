"""Versioned resource storage: the only code that writes `resource` and `resource_version`.

Every write stamps `meta.versionId`/`meta.lastUpdated`, appends a version row and rewrites the
resource's index rows, all on the caller's connection, hence in the caller's transaction.
Updates are compare-and-set on `resource.version`: of two concurrent writers that read the same
version, exactly one succeeds; the other sees zero rows updated and gets `VersionConflict`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import orjson
from sqlalchemy import ColumnElement, Connection, and_, or_, select, text, true

from ekd.errors import Conflict
from ekd.fhir.resource_types import SHARED_TYPES
from ekd.store.schema import INDEX_TABLES, resource, resource_version

#: Index rows of one resource by index table: tuples `(param, *values)` in the order of the
#: table's columns after `resource_pk` and `type` (`ekd.search.index.COLUMNS`).
IndexRows = dict[str, list[tuple]]


class Indexer(Protocol):
    """What the store asks of `ekd.search.index.Indexer`."""

    def table_rows(self, content: dict) -> IndexRows: ...


#: One item of `create_many` once stamped and indexed: type, id, content, index rows, org.
_Item = tuple[str, str, dict, IndexRows, str | None]

#: Items per `create_many` statement on PostgreSQL. Bounds the size of one statement's
#: parameters; a dossier (~200 resources) is a single chunk.
BATCH_CHUNK = 500


class VersionConflict(Conflict):
    """Another transaction changed the resource between our read and our write."""


@dataclass(frozen=True, slots=True)
class Stored:
    pk: int
    type: str
    id: str
    version: int
    last_updated: datetime
    deleted: bool
    content: dict | None
    method: str = ""
    seq: int = 0
    #: URA of the organisation holding the resource (None: shared, or unscoped storage).
    org: str | None = None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


def visible(org: str | None, table, rtype: str | None = None  # type: ignore[no-untyped-def]
            ) -> ColumnElement[bool]:
    """The scoping rule, for every query that reads resource rows: an organisation sees its
    own rows and the shared conformance resources; `org=None` (the server's own work) sees
    all. With `rtype` known the test on the type is settled here rather than in SQL."""
    if org is None or rtype in SHARED_TYPES:
        return true()
    if rtype is not None:
        return table.c.org == org
    return or_(table.c.org == org, table.c.type.in_(SHARED_TYPES))


def now() -> datetime:
    """Server time with millisecond precision: what `meta.lastUpdated` can faithfully carry."""
    t = datetime.now(UTC)
    return t.replace(microsecond=(t.microsecond // 1000) * 1000)


def instant(t: datetime) -> str:
    """FHIR `instant` text for a stored time."""
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


_CURRENT = select(
    resource.c.org,
    resource.c.pk,
    resource.c.type,
    resource.c.id,
    resource.c.version,
    resource.c.last_updated,
    resource.c.deleted,
    resource_version.c.content,
    resource_version.c.method,
    resource_version.c.seq,
).join(
    resource_version,
    and_(
        resource_version.c.resource_pk == resource.c.pk,
        resource_version.c.version == resource.c.version,
    ),
)

_CURRENT_SQL = (
    "SELECT r.pk, r.type, r.id, r.version, r.last_updated, r.deleted, v.content, v.method, "
    "v.seq, r.org FROM resource r JOIN resource_version v ON v.resource_pk = r.pk "
    "AND v.version = r.version WHERE r.type = {type} AND r.id = {id}"
)
_CURRENT_SQL_PG = _CURRENT_SQL.format(type="%(type)s", id="%(id)s")
_CURRENT_SQL_SQLITE = _CURRENT_SQL.format(type=":type", id=":id")
_CURRENT_SQL_PG_ORG = _CURRENT_SQL_PG + " AND r.org = %(org)s"
_CURRENT_SQL_SQLITE_ORG = _CURRENT_SQL_SQLITE + " AND r.org = :org"

_VERSION_COLUMNS = (
    resource_version.c.org,
    resource_version.c.resource_pk.label("pk"),
    resource_version.c.type,
    resource_version.c.id,
    resource_version.c.version,
    resource_version.c.last_updated,
    (resource_version.c.method == "DELETE").label("deleted"),
    resource_version.c.content,
    resource_version.c.method,
    resource_version.c.seq,
)


def _row_to_stored(row) -> Stored:
    return Stored(
        pk=row.pk,
        type=row.type,
        id=row.id,
        version=row.version,
        last_updated=as_utc(row.last_updated),
        deleted=bool(row.deleted),
        content=row.content,
        method=row.method,
        seq=row.seq,
        org=row.org,
    )


def _stamp(content: dict, rtype: str, rid: str, version: int, last_updated: str) -> dict:
    """`last_updated`: `instant` of the write's time, made once for a whole batch."""
    meta = dict(content.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = last_updated
    # resourceType, id and meta lead, as in the spec's examples; the rest keeps the client's order.
    stamped = {"resourceType": rtype, "id": rid, "meta": meta}
    for key, value in content.items():
        if key not in stamped:
            stamped[key] = value
    return stamped


class ResourceStore:
    """Resource reads and writes on one connection (and so within its transaction).

    With `org` set, the store is scoped to that organisation: it sees only that organisation's
    resources plus the shared conformance resources (`SHARED_TYPES`), and what it creates
    belongs to that organisation. Another organisation's resource is simply absent: a read
    answers "not known", exactly as for an id never used. `org=None` is unscoped storage for
    the server's own work (start-up seeding, reindexing, command-line tools).
    """

    def __init__(
        self, conn: Connection, *, indexer: Indexer | None = None, org: str | None = None
    ) -> None:
        self.conn = conn
        self.indexer = indexer
        self.org = org
        self._sqlite = conn.dialect.name == "sqlite"

    def owner(self, rtype: str) -> str | None:
        """The organisation a new resource of this type belongs to."""
        return None if rtype in SHARED_TYPES else self.org

    def scoped(self, rtype: str) -> bool:
        return self.org is not None and rtype not in SHARED_TYPES

    def visible(self, table) -> ColumnElement[bool]:  # type: ignore[no-untyped-def]
        """Rows of `table` (with `type` and `org` columns) this store may see."""
        return visible(self.org, table)

    def _db_time(self, t: datetime) -> datetime:
        # SQLite keeps naive text; store UTC without offset so comparisons stay lexical.
        return t.astimezone(UTC).replace(tzinfo=None) if self._sqlite else t

    # -- reads ------------------------------------------------------------------------------

    def current(self, rtype: str, rid: str, *, lock: bool = False) -> Stored | None:
        """The current version; `lock` (before a write) makes concurrent writers of the same
        resource queue on PostgreSQL instead of racing (SQLite's write lock already does)."""
        where = (resource.c.type == rtype, resource.c.id == rid)
        if lock and not self._sqlite:
            # Lock first, read second: a locking join would re-check the join against the
            # old version row after the wait and return nothing.
            self.conn.execute(select(resource.c.pk).where(*where).with_for_update())
        # The hottest statement of the server: sent as plain driver SQL, which skips
        # SQLAlchemy's statement compilation and caching (~40% of a read's time).
        if self.scoped(rtype):
            sql = _CURRENT_SQL_SQLITE_ORG if self._sqlite else _CURRENT_SQL_PG_ORG
            args = {"type": rtype, "id": rid, "org": self.org}
        else:
            sql = _CURRENT_SQL_SQLITE if self._sqlite else _CURRENT_SQL_PG
            args = {"type": rtype, "id": rid}
        row = self.conn.exec_driver_sql(sql, args).first()
        if row is None:
            return None
        pk, rtype, rid, version, last_updated, deleted, content, method, seq, org = row
        if self._sqlite:  # driver SQL bypasses SQLAlchemy's type conversions
            content = orjson.loads(content) if content is not None else None
            last_updated = datetime.fromisoformat(last_updated)
        return Stored(pk, rtype, rid, version, as_utc(last_updated), bool(deleted), content,
                      method, seq, org)

    def taken(self, rtype: str, rid: str) -> bool:
        """Whether the id is in use by any organisation (ids are unique per type server-wide)."""
        q = select(resource.c.pk).where(resource.c.type == rtype, resource.c.id == rid)
        return self.conn.execute(q).first() is not None

    def current_many(self, pks: list[int]) -> list[Stored]:
        if not pks:
            return []
        rows = self.conn.execute(
            _CURRENT.where(resource.c.pk.in_(pks), self.visible(resource))).all()
        by_pk = {row.pk: _row_to_stored(row) for row in rows}
        return [by_pk[pk] for pk in pks if pk in by_pk]

    def validated_under(self, pks: list[int], stamp: str) -> set[int]:
        """Which of these resources' current versions passed validation under `stamp`."""
        if not pks:
            return set()
        query = select(resource.c.pk).join(resource_version, and_(
            resource_version.c.resource_pk == resource.c.pk,
            resource_version.c.version == resource.c.version,
        )).where(resource.c.pk.in_(pks), resource_version.c.validated == stamp,
                 self.visible(resource))
        return set(self.conn.execute(query).scalars())

    def vread(self, rtype: str, rid: str, version: int) -> Stored | None:
        row = self.conn.execute(
            select(*_VERSION_COLUMNS).where(
                resource_version.c.type == rtype,
                resource_version.c.id == rid,
                resource_version.c.version == version,
                self.visible(resource_version),
            )
        ).first()
        return _row_to_stored(row) if row else None

    def history(
        self,
        rtype: str | None,
        rid: str | None,
        *,
        since: datetime | None,
        at_or_before_seq: int | None,
        limit: int,
    ) -> list[Stored]:
        """Versions newest first; `at_or_before_seq` continues a page from the previous one."""
        q = select(*_VERSION_COLUMNS).where(self.visible(resource_version))
        if rtype is not None:
            q = q.where(resource_version.c.type == rtype)
        if rid is not None:
            q = q.where(resource_version.c.id == rid)
        if since is not None:
            q = q.where(resource_version.c.last_updated > self._db_time(since))
        if at_or_before_seq is not None:
            q = q.where(resource_version.c.seq <= at_or_before_seq)
        q = q.order_by(resource_version.c.seq.desc()).limit(limit)
        return [_row_to_stored(r) for r in self.conn.execute(q)]

    def count_versions(self, rtype: str, rid: str, since: datetime | None) -> int:
        from sqlalchemy import func

        q = select(func.count()).where(
            resource_version.c.type == rtype, resource_version.c.id == rid,
            self.visible(resource_version),
        )
        if since is not None:
            q = q.where(resource_version.c.last_updated > self._db_time(since))
        return int(self.conn.execute(q).scalar_one())

    # -- writes -----------------------------------------------------------------------------
    #
    # On PostgreSQL each write is ONE statement (data-modifying CTEs): resource row, version row
    # and index rows travel in a single round trip, which is what bounds ingest speed. SQLite
    # runs in-process, where round trips are cheap: a few small statements.

    def create(self, rtype: str, rid: str, content: dict, *, method: str = "POST",
               validated: str | None = None) -> Stored:
        """`validated`: the validation stamp the content passed under (`ekd.validation.stamp`),
        kept with the version; None when it was not validated here."""
        when = now()
        stamped = _stamp(content, rtype, rid, 1, instant(when))
        rows = self._index_rows(stamped)
        org = self.owner(rtype)
        if self._sqlite:
            cur = self._sqlite_cursor()
            got = _create_sqlite(cur, rtype, rid, sqlite_time(when), method, stamped, org,
                                 validated)
            pk, seq = got if got is not None else (None, 0)
            if pk is not None:
                _insert_index_sqlite(cur, _sqlite_index_params(rows, pk, rtype, org, {}))
        else:
            row = self.conn.execute(_PG_CREATE, {
                "type": rtype, "id": rid, "ts": when, "org": org, "method": method,
                "content": _json(stamped), "validated": validated, **_pg_index_params(rows),
            }).first()
            pk, seq = (row.pk, row.seq) if row else (None, 0)
        if pk is None:
            raise VersionConflict(f"{rtype}/{rid} was created concurrently by another request")
        return Stored(pk, rtype, rid, 1, when, False, stamped, method, seq, org)

    def create_many(self, items: list[tuple[str, str, dict]], *, method: str = "PUT"
                    ) -> list[Stored]:
        """Create new resources, as `create` would one by one, in a handful of statements.

        Why: importing a received dossier (~200 resources, all new) with `create` costs one
        round trip per resource on PostgreSQL and ~8 statements per resource on SQLite. Here
        each chunk of up to `BATCH_CHUNK` items is ONE statement on PostgreSQL; on SQLite,
        where a statement costs microseconds, the resource and version rows are inserted per
        item as `create` does, and the index rows with one executemany per index table.

        The result is what `create` per item, in order, would give: version 1, the same
        stamping (one `now()` for the whole batch), the same index rows and `org`, `pk` and
        `seq` increasing in item order. A (type, id) that exists already, or repeats an
        earlier item, raises `VersionConflict` naming the first such item. Earlier items may
        have been written by then, so the caller must roll back (as after a failed `create`
        inside a transaction Bundle); the connection stays usable, because conflicts are
        ON CONFLICT DO NOTHING, never a failed statement.
        """
        if not items:
            return []
        when = now()
        prepared: list[_Item] = []
        last_updated = instant(when)
        for rtype, rid, content in items:
            stamped = _stamp(content, rtype, rid, 1, last_updated)
            prepared.append((rtype, rid, stamped, self._index_rows(stamped), self.owner(rtype)))
        out: list[Stored] = []
        sent: set[tuple[str, str]] = set()
        for start in range(0, len(prepared), BATCH_CHUNK):
            chunk = prepared[start:start + BATCH_CHUNK]
            # Only the first occurrence of a (type, id) goes to the database: ON CONFLICT would
            # skip a repeat within one INSERT, but the version and index inserts, which join
            # on (type, id), would still write it twice.
            fresh = []
            for item in chunk:
                if (item[0], item[1]) not in sent:
                    sent.add((item[0], item[1]))
                    fresh.append(item)
            if self._sqlite:
                created = self._create_many_sqlite(fresh, when, method)
            else:
                created = self._create_many_pg(fresh, when, method)
            for rtype, rid, stamped, _rows, org in chunk:
                # A repeat finds its key already taken by the first occurrence.
                got = created.pop((rtype, rid), None)
                if got is None:
                    raise VersionConflict(
                        f"{rtype}/{rid} was created concurrently by another request")
                pk, seq = got
                out.append(Stored(pk, rtype, rid, 1, when, False, stamped, method, seq, org))
        return out

    def _create_many_pg(self, items: list[_Item], when: datetime, method: str
                        ) -> dict[tuple[str, str], tuple[int, int]]:
        """One statement: (type, id) -> (pk, seq) of the items that were created."""
        # Index rows travel as they come from the indexer, per resource: [[ord, rows], ...].
        index: dict[str, list[tuple[int, list[tuple]]]] = {table: [] for table in INDEX_TABLES}
        for position, (_t, _i, _c, rows, _o) in enumerate(items):
            for table, table_rows in rows.items():
                index[table].append((position, table_rows))
        batch = [{"ord": position, "type": rtype, "id": rid, "org": org, "content": stamped}
                 for position, (rtype, rid, stamped, _r, org) in enumerate(items)]
        result = self.conn.execute(_PG_CREATE_MANY, {
            "ts": when, "method": method, "items": _json(batch),
            **{table: _json(rows) for table, rows in index.items()},
        })
        return {(rtype, rid): (pk, seq) for pk, rtype, rid, seq in result}

    def _create_many_sqlite(self, items: list[_Item], when: datetime, method: str
                            ) -> dict[tuple[str, str], tuple[int, int]]:
        """Resource and version rows per item, as `create`; index rows with one executemany
        per index table: (type, id) -> (pk, seq) of the items that were created."""
        ts = sqlite_time(when)
        cur = self._sqlite_cursor()
        created: dict[tuple[str, str], tuple[int, int]] = {}
        index: dict[str, list[tuple]] = {}
        for rtype, rid, stamped, rows, org in items:
            got = _create_sqlite(cur, rtype, rid, ts, method, stamped, org, None)
            if got is not None:
                created[(rtype, rid)] = got
                _sqlite_index_params(rows, got[0], rtype, org, index)
        _insert_index_sqlite(cur, index)
        return created

    def update(self, prev: Stored, content: dict, *, method: str = "PUT",
               validated: str | None = None) -> Stored:
        version = prev.version + 1
        when = now()
        stamped = _stamp(content, prev.type, prev.id, version, instant(when))
        seq = self._next_version(prev, version, when, method, stamped, validated)
        return Stored(prev.pk, prev.type, prev.id, version, when, False, stamped, method, seq,
                      prev.org)

    def delete(self, prev: Stored) -> Stored:
        version = prev.version + 1
        when = now()
        seq = self._next_version(prev, version, when, "DELETE", None)
        return Stored(prev.pk, prev.type, prev.id, version, when, True, None, "DELETE", seq,
                      prev.org)

    def _index_rows(self, content: dict | None) -> IndexRows:
        if content is None or self.indexer is None:
            return {}
        return self.indexer.table_rows(content)

    def reindex(self, stored: Stored) -> None:
        """Rewrite the index rows of a current version (after the parameters changed)."""
        rows = self._index_rows(None if stored.deleted else stored.content)
        if self._sqlite:
            self._unindex_sqlite(stored.pk)
            _insert_index_sqlite(self._sqlite_cursor(), _sqlite_index_params(
                rows, stored.pk, stored.type, stored.org, {}))
        else:
            self.conn.execute(_PG_REINDEX, {"pk": stored.pk, "type": stored.type,
                                            "org": stored.org, **_pg_index_params(rows)})

    def _next_version(
        self, prev: Stored, version: int, when: datetime, method: str, content: dict | None,
        validated: str | None = None,
    ) -> int:
        """Compare-and-set the resource row to `version`, append the version, reindex."""
        rows = self._index_rows(content)
        if self._sqlite:
            seq = self._next_version_sqlite(prev, version, when, method, content, rows,
                                            validated)
        else:
            seq = self.conn.execute(_PG_NEXT_VERSION, {
                "pk": prev.pk, "prev": prev.version, "version": version, "ts": when,
                "deleted": content is None, "type": prev.type, "id": prev.id,
                "method": method, "content": None if content is None else _json(content),
                "org": prev.org, "validated": validated, **_pg_index_params(rows),
            }).scalar_one_or_none()
        if seq is None:
            raise VersionConflict(
                f"{prev.type}/{prev.id} was changed by another request (version "
                f"{prev.version} is no longer current)"
            )
        return seq

    # -- SQLite statements --------------------------------------------------------------------
    # Plain driver SQL: building Core statements per call costs more than SQLite's execution.

    def _sqlite_cursor(self) -> sqlite3.Cursor:
        """A cursor of the connection's sqlite3 connection, in its transaction. Why not
        `exec_driver_sql`: SQLAlchemy's work around a statement costs more than SQLite's
        (a dossier's resource and version rows: 2 ms one by one on the cursor, 5 ms as two
        multi-row statements through SQLAlchemy)."""
        if not self.conn.in_transaction():
            self.conn.begin()  # what the first statement would have done (autobegin)
        return self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

    def _next_version_sqlite(
        self, prev: Stored, version: int, when: datetime, method: str, content: dict | None,
        rows: IndexRows, validated: str | None,
    ) -> int | None:
        ts = sqlite_time(when)
        result = self.conn.exec_driver_sql(_SQLITE_ADVANCE, {
            "version": version, "ts": ts, "deleted": content is None, "pk": prev.pk,
            "prev": prev.version,
        })
        if result.rowcount != 1:
            return None
        cur = self._sqlite_cursor()
        seq = _append_sqlite(cur, prev.pk, prev.type, prev.id, version, ts, method, content,
                             prev.org, validated)
        self._unindex_sqlite(prev.pk)
        _insert_index_sqlite(cur, _sqlite_index_params(rows, prev.pk, prev.type, prev.org, {}))
        return seq

    def _unindex_sqlite(self, pk: int) -> None:
        for sql in _SQLITE_UNINDEX:
            self.conn.exec_driver_sql(sql, {"pk": pk})


def _create_sqlite(cur: sqlite3.Cursor, rtype: str, rid: str, ts: str, method: str,
                   content: dict, org: str | None, validated: str | None
                   ) -> tuple[int, int] | None:
    """The resource and version rows of a new resource: (pk, seq), None if the (type, id) is
    taken. ON CONFLICT DO NOTHING rather than catching IntegrityError, so that a lost race
    leaves the surrounding transaction (a transaction Bundle) usable."""
    cur.execute(_SQLITE_CREATE, (rtype, rid, ts, org))
    if cur.rowcount != 1:
        return None
    pk: int = cur.lastrowid  # type: ignore[assignment]
    return pk, _append_sqlite(cur, pk, rtype, rid, 1, ts, method, content, org, validated)


def _append_sqlite(cur: sqlite3.Cursor, pk: int, rtype: str, rid: str, version: int, ts: str,
                   method: str, content: dict | None, org: str | None, validated: str | None
                   ) -> int:
    """Append a version row; its `seq` (the rowid)."""
    cur.execute(_SQLITE_APPEND, (pk, rtype, rid, version, ts, method,
                                 None if content is None else _json(content), org, validated))
    return cur.lastrowid  # type: ignore[return-value]


def _insert_index_sqlite(cur: sqlite3.Cursor, params: dict[str, list[tuple]]) -> None:
    for table, table_params in params.items():
        if table_params:
            cur.executemany(_SQLITE_INDEX[table], table_params)


def sqlite_time(t: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (so Core queries compare correctly):
    `YYYY-MM-DD HH:MM:SS.ffffff` in UTC. Not strftime: glibc writes year 1 (the open start of
    a Period) as "1", not "0001", which would sort after every real date; isoformat pads."""
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _index_columns(table: str) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) of an index table's value columns, `param` first: the order
    of the indexer's row tuples (`ekd.search.index.COLUMNS`)."""
    pg_types = {"FLOAT": "float8", "DATETIME": "timestamptz"}
    return [
        (c.name, pg_types.get(str(c.type).split("(")[0], "text"))
        for c in INDEX_TABLES[table].columns
        if c.name not in ("resource_pk", "type", "org")
    ]


#: Positions in the row tuples of the columns SQLite gets as text (see `sqlite_time`).
_SQLITE_TIME_POSITIONS = {
    table: tuple(n for n, (_, pg_type) in enumerate(_index_columns(table))
                 if pg_type == "timestamptz")
    for table in INDEX_TABLES
}


def _sqlite_index_params(rows: IndexRows, pk: int, rtype: str, org: str | None,
                         into: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """Add one resource's index rows to `into` (table -> driver parameters), which it
    returns. The tuples are the indexer's with (pk, type, org) appended, as `_SQLITE_INDEX`
    orders its columns: ~3,500 rows a dossier, so no per-row dicts, and datetimes converted
    only where a table has them."""
    tail = (pk, rtype, org)
    for table, table_rows in rows.items():
        params = into.get(table)
        if params is None:
            params = into[table] = []
        times = _SQLITE_TIME_POSITIONS[table]
        if not times:
            params.extend([row + tail for row in table_rows])
            continue
        for row in table_rows:
            values = list(row)
            for n in times:
                value = values[n]
                if isinstance(value, datetime):
                    values[n] = sqlite_time(value)
            values.extend(tail)
            params.append(tuple(values))
    return into


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _pg_index_params(rows: IndexRows) -> dict[str, str]:
    """One JSON array per index table of a resource's row tuples (JSON arrays themselves)."""
    return {table: _json(rows.get(table, ())) for table in INDEX_TABLES}


def _pg_index_ctes(src: str | None) -> str:
    """One INSERT per index table, fed by a JSON array parameter named after the table: the
    row tuples of one resource (`src` is the CTE with its pk; type and org are parameters),
    or with `src=None` those of a whole batch as [position (`ord`) of the resource, rows] per
    resource, which the CTE `k` maps to pk, type and org. A row is a JSON array, its values
    taken by position: the indexer's tuples are sent as they are, without a key per value
    (what `jsonb_to_recordset` would need), and each value is converted as that did, text
    through the column type's input function."""
    parts = []
    for table in INDEX_TABLES:
        columns = _index_columns(table)
        names = ", ".join(c for c, _ in columns)
        picked = ", ".join(f"x.r->>{n}" if t == "text" else f"CAST(x.r->>{n} AS {t})"
                           for n, (_, t) in enumerate(columns))
        if src is None:
            owner = "k.pk, k.type"
            rows = (f"jsonb_array_elements(CAST(:{table} AS jsonb)) AS g(e) "
                    f"JOIN k ON k.ord = CAST(g.e->>0 AS int) "
                    f"CROSS JOIN LATERAL jsonb_array_elements(g.e->1) AS x(r)")
            org = "k.org"
        else:
            owner = f"{src}.pk, :type"
            rows = f"{src}, jsonb_array_elements(CAST(:{table} AS jsonb)) AS x(r)"
            org = ":org"
        parts.append(f"i_{table} AS (INSERT INTO {table} (resource_pk, type, {names}, org) "
                     f"SELECT {owner}, {picked}, {org} FROM {rows})")
    return ",\n".join(parts)


def _pg_unindex_ctes(src: str) -> str:
    return ",\n".join(
        f"d_{table} AS (DELETE FROM {table} WHERE resource_pk IN (SELECT pk FROM {src}))"
        for table in INDEX_TABLES
    )


_PG_CREATE = text(f"""
WITH r AS (
  INSERT INTO resource (type, id, version, last_updated, deleted, org)
  VALUES (:type, :id, 1, :ts, false, :org)
  ON CONFLICT (type, id) DO NOTHING
  RETURNING pk
), v AS (
  INSERT INTO resource_version
    (resource_pk, type, id, version, last_updated, method, content, org, validated)
  SELECT pk, :type, :id, 1, :ts, :method, CAST(:content AS jsonb), :org, :validated FROM r
  RETURNING seq
), {_pg_index_ctes("r")}
SELECT r.pk, v.seq FROM r, v
""")

# The rows are inserted in batch order (ORDER BY ord), so pk and seq increase in item order as
# they would with one `create` per item. A (type, id) that exists already is skipped by ON
# CONFLICT and has no row in `k`: the caller sees it missing from the result.
_PG_CREATE_MANY = text(f"""
WITH src AS (
  SELECT * FROM jsonb_to_recordset(CAST(:items AS jsonb))
    AS s(ord int, type text, id text, org text, content jsonb)
), r AS (
  INSERT INTO resource (type, id, version, last_updated, deleted, org)
  SELECT type, id, 1, :ts, false, org FROM src ORDER BY ord
  ON CONFLICT (type, id) DO NOTHING
  RETURNING pk, type, id
), k AS (
  SELECT src.ord, src.type, src.id, src.org, src.content, r.pk
  FROM src JOIN r ON r.type = src.type AND r.id = src.id
), v AS (
  INSERT INTO resource_version (resource_pk, type, id, version, last_updated, method, content, org)
  SELECT pk, type, id, 1, :ts, :method, content, org FROM k ORDER BY ord
  RETURNING resource_pk, type, id, seq
), {_pg_index_ctes(None)}
SELECT resource_pk, type, id, seq FROM v
""")

# Deleting and inserting index rows of the same resource in one statement is safe: all
# sub-statements see the snapshot from before the statement, so the DELETEs remove only the
# old rows, never the new ones.
_PG_NEXT_VERSION = text(f"""
WITH u AS (
  UPDATE resource SET version = :version, last_updated = :ts, deleted = :deleted
  WHERE pk = :pk AND version = :prev
  RETURNING pk
), {_pg_unindex_ctes("u")}, v AS (
  INSERT INTO resource_version
    (resource_pk, type, id, version, last_updated, method, content, org, validated)
  SELECT pk, :type, :id, :version, :ts, :method, CAST(:content AS jsonb), :org, :validated
  FROM u
  RETURNING seq
), {_pg_index_ctes("u")}
SELECT v.seq FROM v
""")

_PG_REINDEX = text(f"""
WITH u AS (SELECT CAST(:pk AS bigint) AS pk), {_pg_unindex_ctes("u")}, {_pg_index_ctes("u")}
SELECT 1
""")

_SQLITE_CREATE = (
    "INSERT INTO resource (type, id, version, last_updated, deleted, org) "
    "VALUES (?, ?, 1, ?, 0, ?) ON CONFLICT (type, id) DO NOTHING"
)
_SQLITE_ADVANCE = (
    "UPDATE resource SET version = :version, last_updated = :ts, deleted = :deleted "
    "WHERE pk = :pk AND version = :prev"
)
_SQLITE_APPEND = (
    "INSERT INTO resource_version "
    "(resource_pk, type, id, version, last_updated, method, content, org, validated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_UNINDEX = tuple(f"DELETE FROM {t} WHERE resource_pk = :pk" for t in INDEX_TABLES)
#: Index rows are the indexer's tuples with (pk, type, org) appended: the columns in that order.
_SQLITE_INDEX = {
    table: (
        f"INSERT INTO {table} ({', '.join(c for c, _ in _index_columns(table))}, resource_pk, "
        f"type, org) VALUES ({', '.join('?' for _ in _index_columns(table))}, ?, ?, ?)"
    )
    for table in INDEX_TABLES
}
