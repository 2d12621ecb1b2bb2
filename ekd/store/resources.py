"""Versioned resource storage: the only code that writes `resource` and `resource_version`.

Every write stamps `meta.versionId`/`meta.lastUpdated`, appends a version row and rewrites the
resource's index rows, all on the caller's connection, hence in the caller's transaction.
Updates are compare-and-set on `resource.version`: of two concurrent writers that read the same
version, exactly one succeeds; the other sees zero rows updated and gets `VersionConflict`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ekd.errors import Conflict
from ekd.store.schema import resource, resource_version, search_token

#: (param, system, code) rows for one resource; supplied by ekd.search.index.
TokenIndexer = Callable[[dict], Iterable[tuple[str, str | None, str | None]]]


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

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


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

_VERSION_COLUMNS = (
    resource_version.c.resource_pk,
    resource_version.c.type,
    resource_version.c.id,
    resource_version.c.version,
    resource_version.c.last_updated,
    resource_version.c.method,
    resource_version.c.content,
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
    )


def _version_to_stored(row) -> Stored:
    return Stored(
        pk=row.resource_pk,
        type=row.type,
        id=row.id,
        version=row.version,
        last_updated=as_utc(row.last_updated),
        deleted=row.method == "DELETE",
        content=row.content,
        method=row.method,
        seq=row.seq,
    )


def _stamp(content: dict, rtype: str, rid: str, version: int, when: datetime) -> dict:
    meta = dict(content.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(when)
    # resourceType, id and meta lead, as in the spec's examples; the rest keeps the client's order.
    stamped = {"resourceType": rtype, "id": rid, "meta": meta}
    for key, value in content.items():
        if key not in stamped:
            stamped[key] = value
    return stamped


class ResourceStore:
    """Resource reads and writes on one connection (and so within its transaction)."""

    def __init__(
        self, conn: Connection, *, indexer: TokenIndexer | None = None, org: str | None = None
    ) -> None:
        self.conn = conn
        self.indexer = indexer
        self.org = org
        self._sqlite = conn.dialect.name == "sqlite"
        self._insert = sqlite.insert if self._sqlite else postgresql.insert

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
        row = self.conn.execute(_CURRENT.where(*where)).first()
        return _row_to_stored(row) if row else None

    def current_many(self, pks: list[int]) -> list[Stored]:
        if not pks:
            return []
        rows = self.conn.execute(_CURRENT.where(resource.c.pk.in_(pks))).all()
        by_pk = {row.pk: _row_to_stored(row) for row in rows}
        return [by_pk[pk] for pk in pks if pk in by_pk]

    def vread(self, rtype: str, rid: str, version: int) -> Stored | None:
        row = self.conn.execute(
            select(*_VERSION_COLUMNS).where(
                resource_version.c.type == rtype,
                resource_version.c.id == rid,
                resource_version.c.version == version,
            )
        ).first()
        return _version_to_stored(row) if row else None

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
        q = select(*_VERSION_COLUMNS)
        if rtype is not None:
            q = q.where(resource_version.c.type == rtype)
        if rid is not None:
            q = q.where(resource_version.c.id == rid)
        if since is not None:
            q = q.where(resource_version.c.last_updated > self._db_time(since))
        if at_or_before_seq is not None:
            q = q.where(resource_version.c.seq <= at_or_before_seq)
        q = q.order_by(resource_version.c.seq.desc()).limit(limit)
        return [_version_to_stored(r) for r in self.conn.execute(q)]

    def count_versions(self, rtype: str, rid: str, since: datetime | None) -> int:
        from sqlalchemy import func

        q = select(func.count()).where(
            resource_version.c.type == rtype, resource_version.c.id == rid
        )
        if since is not None:
            q = q.where(resource_version.c.last_updated > self._db_time(since))
        return int(self.conn.execute(q).scalar_one())

    # -- writes -----------------------------------------------------------------------------

    def create(self, rtype: str, rid: str, content: dict, *, method: str = "POST") -> Stored:
        when = now()
        stamped = _stamp(content, rtype, rid, 1, when)
        # ON CONFLICT DO NOTHING instead of catching IntegrityError: a failed INSERT would abort
        # the whole PostgreSQL transaction (think of a transaction Bundle), a skipped one does not.
        pk = self.conn.execute(
            self._insert(resource)
            .values(
                type=rtype,
                id=rid,
                version=1,
                last_updated=self._db_time(when),
                deleted=False,
                org=self.org,
            )
            .on_conflict_do_nothing(index_elements=["type", "id"])
            .returning(resource.c.pk)
        ).scalar_one_or_none()
        if pk is None:
            raise VersionConflict(f"{rtype}/{rid} was created concurrently by another request")
        seq = self._append(pk, rtype, rid, 1, when, method, stamped)
        self._reindex(pk, rtype, stamped, replace=False)
        return Stored(pk, rtype, rid, 1, when, False, stamped, method, seq)

    def update(self, prev: Stored, content: dict, *, method: str = "PUT") -> Stored:
        when = now()
        version = prev.version + 1
        stamped = _stamp(content, prev.type, prev.id, version, when)
        self._advance(prev, version, when, deleted=False)
        seq = self._append(prev.pk, prev.type, prev.id, version, when, method, stamped)
        self._reindex(prev.pk, prev.type, stamped, replace=True)
        return Stored(prev.pk, prev.type, prev.id, version, when, False, stamped, method, seq)

    def delete(self, prev: Stored) -> Stored:
        when = now()
        version = prev.version + 1
        self._advance(prev, version, when, deleted=True)
        seq = self._append(prev.pk, prev.type, prev.id, version, when, "DELETE", None)
        self.conn.execute(delete(search_token).where(search_token.c.resource_pk == prev.pk))
        return Stored(prev.pk, prev.type, prev.id, version, when, True, None, "DELETE", seq)

    def _advance(self, prev: Stored, version: int, when: datetime, *, deleted: bool) -> None:
        result = self.conn.execute(
            update(resource)
            .where(resource.c.pk == prev.pk, resource.c.version == prev.version)
            .values(version=version, last_updated=self._db_time(when), deleted=deleted)
        )
        if result.rowcount != 1:
            raise VersionConflict(
                f"{prev.type}/{prev.id} was changed by another request (version "
                f"{prev.version} is no longer current)"
            )

    def _append(
        self,
        pk: int,
        rtype: str,
        rid: str,
        version: int,
        when: datetime,
        method: str,
        content: dict | None,
    ) -> int:
        return self.conn.execute(
            insert(resource_version)
            .values(
                resource_pk=pk,
                type=rtype,
                id=rid,
                version=version,
                last_updated=self._db_time(when),
                method=method,
                content=content,
                org=self.org,
            )
            .returning(resource_version.c.seq)
        ).scalar_one()

    def _reindex(self, pk: int, rtype: str, content: dict, *, replace: bool) -> None:
        if replace:
            self.conn.execute(delete(search_token).where(search_token.c.resource_pk == pk))
        if self.indexer is None:
            return
        rows = [
            {"resource_pk": pk, "type": rtype, "param": p, "system": s, "code": c, "org": self.org}
            for p, s, c in self.indexer(content)
        ]
        if rows:
            self.conn.execute(insert(search_token), rows)
