"""Running a parsed search: matches, paging, totals and included resources.

Paging is by keyset, not offset (http://hl7.org/fhir/R4/http.html#paging leaves the how to
the server): a page link carries the sort values and pk of the row it continues from, and the
highest pk that existed when the first page was served. Resources created later never slip
into a running paging session, and deleting one never shifts a later page, so clients paging
through a cohort see each match once. (A resource updated so that its sort value moves can
still be seen twice or not at all: the pages are not one database snapshot.)
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import ColumnElement, Connection, and_, func, or_, select, true, tuple_

from ekd.errors import InvalidRequest
from ekd.search import sql
from ekd.search.parameters import SearchParameters
from ekd.search.params import Include, Parser, SearchQuery
from ekd.store.resources import ResourceStore, Stored
from ekd.store.schema import resource, search_reference

#: Rounds of `_include:iterate` / `_revinclude:iterate` before ekd stops following.
MAX_ITERATE = 4
#: Included resources per page, at most.
MAX_INCLUDED = 5_000


@dataclass
class Page:
    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    next: str | None = None
    previous: str | None = None


@dataclass
class Cursor:
    values: list
    pk: int
    high_water: int
    backwards: bool
    total: int | None

    def encode(self) -> str:
        values = [v.isoformat() if isinstance(v, datetime) else v for v in self.values]
        raw = orjson.dumps([values, self.pk, self.high_water, self.backwards, self.total])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, columns: list[sql.SortColumn]) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            values, pk, high_water, backwards, total = orjson.loads(raw)
            if len(values) != len(columns):
                raise ValueError("sort keys changed")
            decoded = [datetime.fromisoformat(v) if c.kind == "time" else v
                       for v, c in zip(values, columns, strict=True)]
            return cls(decoded, int(pk), int(high_water), bool(backwards), total)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise InvalidRequest("_cursor is not a page link of this search (follow the "
                                 "links of the previous page)", expression="_cursor") from None


class SearchService:
    """Search over the store's index tables; one per server, shared by all requests."""

    def __init__(self, parameters: SearchParameters, expand: sql.Expander | None = None
                 ) -> None:
        self.parameters = parameters
        self.expand = expand

    def parse(self, rtype: str, params: list[tuple[str, str]], *, strict: bool = False,
              max_count: int = 1000) -> SearchQuery:
        return Parser(self.parameters, strict=strict, max_count=max_count).parse(rtype, params)

    def context(self, store: ResourceStore, base: str = "") -> sql.Context:
        """Every search runs in a store's scope: the organisation it may see."""
        _plan_for_values(store.conn)
        return sql.Context(store.conn.dialect.name, self.expand, base,
                           self.parameters.single_valued, store.org)

    def _select(self, ctx: sql.Context, query: SearchQuery, *columns) -> tuple:
        r = resource.alias("r")
        q = select(r.c.pk, *columns) if columns else select(r.c.pk)
        return r, q.where(r.c.type == query.type, r.c.deleted.is_(False),
                          sql.visible(ctx, r, query.type),
                          *sql.where(ctx, r, query.type, query.criteria))

    def matching_pks(self, store: ResourceStore, query: SearchQuery, *,
                     limit: int | None = None, base: str = "") -> list[int]:
        _, q = self._select(self.context(store, base), query)
        q = q.order_by("pk")
        if limit is not None:
            q = q.limit(limit)
        return list(store.conn.execute(q).scalars())

    def count(self, store: ResourceStore, query: SearchQuery, base: str = "") -> int:
        _r, q = self._select(self.context(store, base), query)
        return int(store.conn.execute(
            select(func.count()).select_from(q.subquery())).scalar_one())

    def estimate(self, store: ResourceStore, query: SearchQuery, base: str = "") -> int:
        """The planner's row estimate on PostgreSQL (no scan); an exact count on SQLite."""
        conn = store.conn
        if conn.dialect.name != "postgresql":
            return self.count(store, query, base)
        _, q = self._select(self.context(store, base), query)
        compiled = q.compile(dialect=conn.dialect)
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled),
                                    compiled.params).scalar_one()
        if isinstance(plan, str | bytes):
            plan = orjson.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])

    def page(self, store: ResourceStore, query: SearchQuery, count: int, base: str = ""
             ) -> Page:
        conn = store.conn
        ctx = self.context(store, base)
        r = resource.alias("r")
        columns = sql.sort_columns(ctx, r, query.type, query.sort)
        cursor = Cursor.decode(query.cursor, columns) if query.cursor else None
        q = select(r.c.pk, *(c.expr for c in columns)).where(
            r.c.type == query.type, r.c.deleted.is_(False), sql.visible(ctx, r, query.type),
            *sql.where(ctx, r, query.type, query.criteria))
        backwards = bool(cursor and cursor.backwards)
        if cursor is not None:
            q = q.where(r.c.pk <= cursor.high_water,
                        sql.after(columns, r.c.pk, cursor.values, cursor.pk, backwards))
        order = []
        for c in columns:
            order.append(c.expr.asc() if c.descending == backwards else c.expr.desc())
        order.append(r.c.pk.desc() if backwards else r.c.pk.asc())
        if query.offset and cursor is None:
            q = q.offset(query.offset)
        rows = conn.execute(q.order_by(*order).limit(count + 1)).all()
        more = len(rows) > count
        rows = rows[:count]
        if backwards:
            rows.reverse()
        matches = store.current_many([row[0] for row in rows])
        high_water = cursor.high_water if cursor else self._high_water(conn)
        page = Page(matches)
        page.total = cursor.total if cursor else self._first_total(store, query, base, rows,
                                                                   more)
        if rows:
            first, last = rows[0], rows[-1]
            has_next = more if not backwards else True
            has_previous = (more if backwards else cursor is not None) or bool(query.offset)
            if has_next:
                page.next = Cursor(list(last[1:]), last[0], high_water, False,
                                   page.total).encode()
            if has_previous:
                page.previous = Cursor(list(first[1:]), first[0], high_water, True,
                                       page.total).encode()
        if query.includes and matches:
            page.included = self.included(store, matches, query.includes, base)
        return page

    def _high_water(self, conn: Connection) -> int:
        return int(conn.execute(select(func.coalesce(func.max(resource.c.pk), 0))).scalar_one())

    def _first_total(self, store: ResourceStore, query: SearchQuery, base: str, rows: list,
                     more: bool) -> int | None:
        if query.total == "none":
            return None
        if not more and not query.offset and query.total != "estimate":
            return len(rows)
        if query.total == "estimate":
            return self.estimate(store, query, base)
        return self.count(store, query, base)

    # -- _include / _revinclude ---------------------------------------------------------------

    def included(self, store: ResourceStore, matches: list[Stored], includes: list[Include],
                 base: str = "") -> list[Stored]:
        """What `_include`/`_revinclude` add: only resources the store may see (another
        organisation's resource is left out as if the reference pointed nowhere)."""
        seen = {s.pk for s in matches}
        found: list[Stored] = []
        frontier = matches
        for round_ in range(MAX_ITERATE + 1):
            rules = [i for i in includes if round_ == 0 or i.iterate]
            if not rules or not frontier:
                break
            pks = [pk for pk in self._include_pks(store, frontier, rules, base)
                   if pk not in seen]
            if not pks:
                break
            pks = pks[: MAX_INCLUDED - len(found)]
            seen.update(pks)
            frontier = store.current_many(pks)
            found.extend(frontier)
            if len(found) >= MAX_INCLUDED:
                break
        return found

    def _include_pks(self, store: ResourceStore, sources: list[Stored], rules: list[Include],
                     base: str) -> list[int]:
        conn = store.conn
        out: list[int] = []
        forward = [i for i in rules if not i.reverse]
        reverse = [i for i in rules if i.reverse]
        if forward:
            ref = search_reference
            conds = []
            for rule in forward:
                c = [ref.c.resource_pk.in_([s.pk for s in sources
                                            if rule.source_type in (None, s.type)])]
                if rule.param is not None:
                    c.append(ref.c.param == rule.param.code)
                    c.append(ref.c.type == rule.source_type)
                if rule.target_type is not None:
                    c.append(ref.c.target_type == rule.target_type)
                conds.append(_and(c))
            targets = select(ref.c.target_type, ref.c.target_id).where(
                ref.c.target_id.is_not(None), sql.local(ref, base), or_(*conds)).distinct()
            pairs = [tuple(row) for row in conn.execute(targets)]
            out.extend(self._pks_of(store, pairs))
        if reverse:
            ref = search_reference
            pairs = [(s.type, s.id) for s in sources]
            conds = []
            for rule in reverse:
                c = []
                if rule.source_type is not None:
                    c.append(ref.c.type == rule.source_type)
                if rule.param is not None:
                    c.append(ref.c.param == rule.param.code)
                conds.append(_and(c))
            q = select(ref.c.resource_pk).join(resource, resource.c.pk == ref.c.resource_pk).where(
                tuple_(ref.c.target_type, ref.c.target_id).in_(pairs), sql.local(ref, base),
                resource.c.deleted.is_(False), store.visible(resource), or_(*conds)).distinct()
            out.extend(conn.execute(q).scalars())
        return out

    def _pks_of(self, store: ResourceStore, pairs: Iterable[tuple[str, str]]) -> list[int]:
        pairs = list(pairs)
        if not pairs:
            return []
        q = select(resource.c.pk).where(tuple_(resource.c.type, resource.c.id).in_(pairs),
                                        resource.c.deleted.is_(False),
                                        store.visible(resource)).order_by(resource.c.pk)
        return list(store.conn.execute(q).scalars())

    # -- $everything ----------------------------------------------------------------------------

    def compartment_pks(self, store: ResourceStore, patient_id: str, *,
                        types: set[str] | None, since: datetime | None, base: str = ""
                        ) -> list[int]:
        """The patient, what is in its compartment (http://hl7.org/fhir/R4/compartmentdefinition
        -patient.html) and what those resources refer to outside it, in pk order: all of it
        within the store's organisation."""
        conn = store.conn
        _plan_for_values(conn)
        pairs = [(t, p) for t, params in self.parameters.patient_compartment.items()
                 for p in params if self.parameters.get(t, p) is not None]
        ref = search_reference
        members = select(ref.c.resource_pk).where(
            ref.c.target_id == patient_id, ref.c.target_type == "Patient", sql.local(ref, base),
            tuple_(ref.c.type, ref.c.param).in_(pairs))
        # Two lookups, not one `pk IN (...) OR id = ...`: PostgreSQL cannot serve that OR
        # from indexes and scans the whole resource table.
        inside = self._pks_of(store, [("Patient", patient_id)])
        if not inside:
            return []
        inside += conn.execute(select(resource.c.pk).where(
            resource.c.deleted.is_(False), store.visible(resource),
            resource.c.pk.in_(members))).scalars()
        if not inside:
            return []
        referenced = select(ref.c.target_type, ref.c.target_id).where(
            ref.c.resource_pk.in_(inside), ref.c.target_id.is_not(None), sql.local(ref, base),
            ref.c.target_type != "Patient").distinct()
        outside = self._pks_of(store, [tuple(row) for row in conn.execute(referenced)])
        pks = sorted(set(inside) | set(outside))
        if types is None and since is None:
            return pks
        q = select(resource.c.pk).where(resource.c.pk.in_(pks))
        if types is not None:
            q = q.where(resource.c.type.in_(types))
        if since is not None:
            q = q.where(resource.c.last_updated >= _db_time(conn, since))
        return list(conn.execute(q.order_by(resource.c.pk)).scalars())


def _plan_for_values(conn: Connection) -> None:
    """psycopg prepares a statement after its 5th run, and PostgreSQL may then switch to a
    generic plan, one that cannot see that `code = '8302-2'` matches 8% of all Observations and
    `subject = X` a handful (measured at 1M resources: 1.36 s instead of 0.6 ms). Search
    statements are planned for their values, always; the setting ends with the transaction."""
    if conn.dialect.name != "postgresql" or not conn.in_transaction():
        return
    transaction = conn.get_transaction()
    if conn.info.get("ekd_custom_plans") is not transaction:  # once per transaction
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
        conn.info["ekd_custom_plans"] = transaction


def plan_generically(conn: Connection) -> None:
    """Undo `_plan_for_values` for the rest of the transaction, before statements whose plan
    does not depend on their values: a dossier import's one big INSERT (`create_many`) costs
    ~30-50 ms more when PostgreSQL must plan it afresh every time (measured, 200 resources).
    A search later in the transaction sets custom plans again."""
    if conn.dialect.name != "postgresql" or conn.info.get("ekd_custom_plans") is None:
        return
    conn.exec_driver_sql("SET LOCAL plan_cache_mode = auto")
    conn.info.pop("ekd_custom_plans", None)


def _and(conds: list) -> ColumnElement[bool]:
    return and_(*conds) if conds else true()


def _db_time(conn: Connection, t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if conn.dialect.name == "sqlite" else t
