"""Search criteria as SQL over ekd's index tables (SQLAlchemy Core, PostgreSQL and SQLite).

Each criterion becomes `alias.pk IN (SELECT resource_pk FROM search_x WHERE ...)`: one index
lookup per parameter, intersected by the planner. Comparison semantics follow
http://hl7.org/fhir/R4/search.html#prefix with every indexed value a range [low, high):

    eq  low >= sl and high <= sh     ne  not eq
    gt  high > sh                    lt  low < sl
    ge  gt or eq                     le  lt or eq
    sa  low >= sh                    eb  high <= sl
    ap  overlaps the search range widened by 10% of its distance from now

where [sl, sh) is the range the search value's precision implies. Numbers and quantities are
stored as points, so for them gt/lt/ge/le compare the value itself and eq/ne use the range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    FromClause,
    String,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.expression import ColumnOperators

from ekd.errors import InvalidRequest
from ekd.search.index import FAR_FUTURE, FAR_PAST, UCUM, UNITS, canonical_quantity
from ekd.search.params import (
    Chain,
    CompositeValue,
    Criterion,
    DateValue,
    Has,
    Node,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    Token,
)
from ekd.store import resources
from ekd.store.schema import (
    resource,
    search_composite,
    search_date,
    search_number,
    search_quantity,
    search_reference,
    search_string,
    search_token,
    search_uri,
)

TABLE_OF = {
    "token": search_token, "string": search_string, "date": search_date,
    "number": search_number, "quantity": search_quantity, "reference": search_reference,
    "uri": search_uri, "composite": search_composite,
}
#: Sorts after any text ekd stores (a code point no FHIR string uses in practice).
TEXT_LAST = "\U0010ffff"
TEXT_FIRST = ""
NUMBER_LAST = 1e300
NUMBER_FIRST = -1e300

#: ValueSet url -> [(system, code)]; raises InvalidRequest for an unknown ValueSet.
Expander = Callable[[str], list[tuple[str | None, str]]]


@dataclass
class Context:
    """What compiling needs besides the query: the dialect, ValueSets, the server's base."""

    dialect: str
    expand: Expander | None = None
    base: str = ""
    #: (type, code) -> at most one index row per resource (see SearchParameters.single_valued)
    single_valued: Callable[[str, str], bool] | None = None
    #: The organisation whose resources the search may see (None: unscoped, the server's own).
    org: str | None = None

    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"


def visible(ctx: Context, alias: FromClause, rtype: str) -> ColumnElement[bool]:
    """Rows of `alias` (a resource table alias of type `rtype`) the search may see: every
    table the query joins to is scoped, so a chain or `_has` cannot probe another
    organisation's resources through a reference to them."""
    return resources.visible(ctx.org, alias, rtype)


def prefix_range(col: ColumnOperators, prefix: str) -> ColumnElement[bool]:
    """`col` starts with `prefix`, as a range an ordinary btree index serves."""
    if not prefix:
        return true()
    return and_(col >= prefix, col < prefix + TEXT_LAST)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- criteria --------------------------------------------------------------------------------


def where(ctx: Context, alias: FromClause, rtype: str, nodes: list[Node]
          ) -> list[ColumnElement[bool]]:
    clauses = []
    same_row: dict[str, list[Criterion]] = {}
    for node in nodes:
        if isinstance(node, Criterion) and _one_row(ctx, rtype, node):
            same_row.setdefault(node.name, []).append(node)
        else:
            clauses.append(node_clause(ctx, alias, rtype, node))
    for group in same_row.values():
        if len(group) == 1:
            clauses.append(node_clause(ctx, alias, rtype, group[0]))
            continue
        # AND of criteria on a parameter with at most one row per resource: one lookup.
        table = search_date
        conds = [or_(*(_value_clause(ctx, table, c, v) for v in c.values)) for c in group]
        assert group[0].param is not None
        clauses.append(alias.c.pk.in_(_rows(table, rtype, group[0].param.code, and_(*conds))))
    return clauses


def _one_row(ctx: Context, rtype: str, crit: Criterion) -> bool:
    return (crit.type == "date" and crit.modifier is None and crit.param is not None
            and ctx.single_valued is not None and ctx.single_valued(rtype, crit.param.code))


def node_clause(ctx: Context, alias: FromClause, rtype: str, node: Node) -> ColumnElement[bool]:
    if isinstance(node, Chain):
        return _chain(ctx, alias, rtype, node)
    if isinstance(node, Has):
        return _has(ctx, alias, rtype, node)
    return _criterion(ctx, alias, rtype, node)


def _rows(table: FromClause, rtype: str, param: str, cond: ColumnElement[bool]):
    return select(table.c.resource_pk).where(
        table.c.type == rtype, table.c.param == param, cond)


def _criterion(ctx: Context, alias: FromClause, rtype: str, crit: Criterion
               ) -> ColumnElement[bool]:
    pk = alias.c.pk
    if crit.type == "_id":
        if crit.modifier == "missing":
            return false() if crit.missing else true()
        return alias.c.id.in_(crit.values)
    if crit.type == "_lastUpdated":
        return or_(*(_point_date(alias.c.last_updated, v) for v in crit.values))
    if crit.type == "_list":
        lists = resource.alias("l")
        ref = search_reference.alias("lr")
        return alias.c.id.in_(
            select(ref.c.target_id).join(lists, lists.c.pk == ref.c.resource_pk).where(
                ref.c.type == "List", ref.c.param == "item", ref.c.target_type == rtype,
                lists.c.type == "List", lists.c.id.in_(crit.values),
                lists.c.deleted.is_(False), visible(ctx, lists, "List")))
    assert crit.param is not None
    table = TABLE_OF[crit.type]
    code = crit.param.code
    if crit.modifier == "missing":
        present = pk.in_(select(table.c.resource_pk).where(
            table.c.type == rtype, table.c.param == code))
        if crit.type == "reference":  # a reference by identifier only is a value too
            present = or_(present, pk.in_(select(search_token.c.resource_pk).where(
                search_token.c.type == rtype, search_token.c.param == f"{code}:identifier")))
        return not_(present) if crit.missing else present
    if crit.type == "reference" and crit.modifier == "identifier":
        table, code = search_token, f"{code}:identifier"
    if crit.type == "token" and crit.modifier == "of-type":
        code = f"{code}:of-type"
    if crit.type == "token" and crit.modifier in ("not", "not-in"):
        positive = Criterion(crit.name, crit.param, crit.type,
                             "in" if crit.modifier == "not-in" else None, crit.values)
        return not_(_criterion(ctx, alias, rtype, positive))
    conds = [_value_clause(ctx, table, crit, v) for v in crit.values]
    return pk.in_(_rows(table, rtype, code, or_(*conds)))


def _value_clause(ctx: Context, t: FromClause, crit: Criterion, v: object
                  ) -> ColumnElement[bool]:
    kind, modifier = crit.type, crit.modifier
    if kind == "string":
        assert isinstance(v, str)
        if modifier == "exact":
            return t.c.exact == v
        if modifier == "contains":
            return t.c.norm.like(f"%{_like_escape(v)}%", escape="\\")
        return prefix_range(t.c.norm, v)
    if kind == "token" or (kind == "reference" and modifier == "identifier"):
        if modifier == "text":
            assert isinstance(v, str)
            return prefix_range(t.c.text, v)
        if modifier == "in":
            assert isinstance(v, str)
            return _in_valueset(ctx, t, v, crit.name)
        assert isinstance(v, Token)
        return token_match(t.c.system, t.c.code, v)
    if kind == "date":
        assert isinstance(v, DateValue)
        return date_match(t.c.low, t.c.high, v)
    if kind == "number":
        assert isinstance(v, NumberValue)
        return number_match(t.c.value, v)
    if kind == "quantity":
        assert isinstance(v, QuantityValue)
        return quantity_match(t.c.system, t.c.code, t.c.value, t.c.canon_code, t.c.canon_value,
                              v)
    if kind == "reference":
        assert isinstance(v, ReferenceValue)
        return reference_match(ctx, t, v, crit.param.target if crit.param else ())
    if kind == "uri":
        assert isinstance(v, str)
        if modifier == "below":
            return prefix_range(t.c.uri, v)
        if modifier == "above":
            return t.c.uri.in_(uri_ancestors(v))
        return t.c.uri == v
    if kind == "composite":
        assert isinstance(v, CompositeValue)
        return _composite(t, crit.second_type, v)
    raise InvalidRequest(f"Search parameter '{crit.name}': {kind} is not supported",
                         expression=crit.name)


def uri_ancestors(value: str) -> list[str]:
    """`http://a/b/c` -> [`http://a/b/c`, `http://a/b`, `http://a`] (for `:above`)."""
    out = [value]
    scheme, sep, rest = value.partition("://")
    parts = rest.split("/") if sep else value.split("/")
    for i in range(len(parts) - 1, 0, -1):
        head = "/".join(parts[:i])
        out.append(f"{scheme}{sep}{head}" if sep else head)
    return out


def token_match(system: ColumnElement, code: ColumnElement, v: Token) -> ColumnElement[bool]:
    conds = []
    if v.code is not None:
        conds.append(code == v.code)
    if v.no_system:
        conds.append(system.is_(None))
    elif v.system is not None:
        conds.append(system == v.system)
    return and_(*conds) if conds else true()


def _in_valueset(ctx: Context, t: FromClause, url: str, name: str) -> ColumnElement[bool]:
    if ctx.expand is None:
        raise InvalidRequest(f"Search parameter '{name}': ValueSets are not available",
                             expression=name)
    codes = ctx.expand(url)
    if not codes:
        return false()
    by_system: dict[str | None, list[str]] = {}
    for system, code in codes:
        by_system.setdefault(system, []).append(code)
    return or_(*(and_(t.c.system == s if s else t.c.system.is_(None), t.c.code.in_(c))
                 for s, c in by_system.items()))


def approx_widening(low: datetime, high: datetime) -> tuple[datetime, datetime]:
    """`ap`: the search range widened by 10% of its distance from now (at least a day)."""
    now = datetime.now(UTC)
    gap = max(abs(now - (low + (high - low) / 2)) * 0.1, timedelta(days=1))
    wide_low = low - gap if low - FAR_PAST > gap else FAR_PAST
    wide_high = high + gap if FAR_FUTURE - high > gap else FAR_FUTURE
    return wide_low, wide_high


def date_match(low: ColumnElement, high: ColumnElement, v: DateValue) -> ColumnElement[bool]:
    sl, sh = v.low, v.high
    eq = and_(low >= sl, high <= sh)
    p = v.prefix
    if p == "eq":
        return eq
    if p == "ne":
        return not_(eq)
    if p == "gt":
        return high > sh
    if p == "lt":
        return low < sl
    if p == "ge":  # the first term only narrows the index range; the OR decides
        return and_(high > sl, or_(high > sh, low >= sl))
    if p == "le":
        return and_(low < sh, or_(low < sl, high <= sh))
    if p == "sa":
        return low >= sh
    if p == "eb":
        return high <= sl
    wl, wh = approx_widening(sl, sh)
    return and_(low < wh, high > wl)


def _point_date(col: ColumnElement, v: DateValue) -> ColumnElement[bool]:
    """A date comparison on a stored instant (`_lastUpdated`): the range [t, t]."""
    sl, sh = v.low, v.high
    eq = and_(col >= sl, col < sh)
    p = v.prefix
    if p == "eq":
        return eq
    if p == "ne":
        return not_(eq)
    if p in ("gt", "sa"):
        return col >= sh
    if p in ("lt", "eb"):
        return col < sl
    if p == "ge":
        return col >= sl
    if p == "le":
        return col < sh
    wl, wh = approx_widening(sl, sh)
    return and_(col >= wl, col < wh)


def number_match(col: ColumnElement, v: NumberValue, scale: Decimal = Decimal(1)
                 ) -> ColumnElement[bool]:
    value, lo, hi = (float(v.value * scale), float(v.low * scale), float(v.high * scale))
    p = v.prefix
    if p == "eq":
        return and_(col >= lo, col < hi)
    if p == "ne":
        return not_(and_(col >= lo, col < hi))
    if p in ("gt", "sa"):
        return col > value
    if p in ("lt", "eb"):
        return col < value
    if p == "ge":
        return col >= value
    if p == "le":
        return col <= value
    exact = v.value * scale  # the margin in decimal: 1.32 m is within 10% of 1.2 m
    margin = abs(exact) / 10
    return and_(col >= float(exact - margin), col <= float(exact + margin))


def quantity_match(system: ColumnElement, code: ColumnElement, value: ColumnElement,
                   canon_code: ColumnElement, canon_value: ColumnElement, v: QuantityValue
                   ) -> ColumnElement[bool]:
    unit, _ = canonical_quantity(v.number.value, v.system, v.code)
    if unit is not None and v.code is not None:
        return and_(canon_code == unit, number_match(canon_value, v.number, UNITS[v.code][1]))
    return _unconverted(system, code, value, v)


def _unconverted(system: ColumnElement, code: ColumnElement, value: ColumnElement,
                 v: QuantityValue) -> ColumnElement[bool]:
    """The number, and the unit and system where the search gives them, as they stand."""
    conds = [number_match(value, v.number)]
    if v.code is not None:
        conds.append(code == v.code)
    if v.system is not None:
        conds.append(system == v.system)
    return and_(*conds)


def stored_quantity_match(system: ColumnElement, code: ColumnElement, value: ColumnElement,
                          v: QuantityValue) -> ColumnElement[bool]:
    """`quantity_match` for a quantity indexed as given (a composite's component): a search
    value in a unit ekd converts matches each unit of its dimension at that unit's scale."""
    unit, _ = canonical_quantity(v.number.value, v.system, v.code)
    if unit is None or v.code is None:
        return _unconverted(system, code, value, v)
    factor = UNITS[v.code][1]
    return and_(system == UCUM, or_(*(
        and_(code == other, number_match(value, v.number, factor / other_factor))
        for other, (other_unit, other_factor) in UNITS.items() if other_unit == unit)))


def local(ref: FromClause, base: str) -> ColumnElement[bool]:
    """Reference rows naming a resource of this server: relative, or absolute under `base`.
    "A relative reference resolving to the same value as a specified absolute URL, or vice
    versa, qualifies as a match" (http://hl7.org/fhir/R4/search.html#reference)."""
    if not base:
        return ref.c.url.is_(None)
    prefix = base.rstrip("/") + "/"
    return or_(ref.c.url.is_(None), func.substr(ref.c.url, 1, len(prefix)) == prefix)


def reference_match(ctx: Context, t: FromClause, v: ReferenceValue, targets: tuple[str, ...]
                    ) -> ColumnElement[bool]:
    if v.url is not None:
        base = ctx.base.rstrip("/") + "/"
        conds = [t.c.url == v.url, t.c.url.like(f"{_like_escape(v.url)}|%", escape="\\")]
        if ctx.base and v.url.startswith(base):
            name = v.url[len(base):].split("/_history/", 1)[0].split("/")
            if len(name) == 2:
                conds.append(and_(local(t, ctx.base), t.c.target_type == name[0],
                                  t.c.target_id == name[1]))
        return or_(*conds)
    conds = [t.c.target_id == v.id, local(t, ctx.base)]
    if v.type is not None:
        conds.append(t.c.target_type == v.type)
    return and_(*conds)


def _composite(t: FromClause, second_type: str | None, v: CompositeValue) -> ColumnElement[bool]:
    first = token_match(t.c.system, t.c.code, v.first)
    s = v.second
    if second_type == "token":
        assert isinstance(s, Token)
        second = token_match(t.c.c2_system, t.c.c2_code, s)
    elif second_type == "quantity":
        assert isinstance(s, QuantityValue)
        second = stored_quantity_match(t.c.c2_system, t.c.c2_code, t.c.c2_value, s)
    elif second_type == "number":
        assert isinstance(s, NumberValue)
        second = number_match(t.c.c2_value, s)
    elif second_type == "date":
        assert isinstance(s, DateValue)
        second = date_match(t.c.c2_low, t.c.c2_high, s)
    elif second_type == "string":
        assert isinstance(s, str)
        second = prefix_range(t.c.c2_text, s)
    else:
        assert isinstance(s, ReferenceValue)
        second = and_(t.c.c2_code == s.id, *(() if s.type is None else (t.c.c2_system == s.type,)))
    return and_(first, second)


def _chain(ctx: Context, alias: FromClause, rtype: str, chain: Chain) -> ColumnElement[bool]:
    ref = search_reference.alias()
    options = []
    for target, inner in chain.inner.items():
        t = resource.alias()
        targets = select(t.c.id).where(t.c.type == target, t.c.deleted.is_(False),
                                       visible(ctx, t, target),
                                       node_clause(ctx, t, target, inner))
        options.append(and_(ref.c.target_type == target, ref.c.target_id.in_(targets)))
    return alias.c.pk.in_(select(ref.c.resource_pk).where(
        ref.c.type == rtype, ref.c.param == chain.param.code, local(ref, ctx.base),
        or_(*options)))


def _has(ctx: Context, alias: FromClause, rtype: str, has: Has) -> ColumnElement[bool]:
    ref = search_reference.alias()
    s = resource.alias()
    sources = select(s.c.pk).where(s.c.type == has.source_type, s.c.deleted.is_(False),
                                   visible(ctx, s, has.source_type),
                                   node_clause(ctx, s, has.source_type, has.inner))
    return alias.c.id.in_(select(ref.c.target_id).where(
        ref.c.type == has.source_type, ref.c.param == has.param.code,
        ref.c.target_type == rtype, local(ref, ctx.base), ref.c.resource_pk.in_(sources)))


# -- sorting ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SortColumn:
    expr: ColumnElement
    descending: bool
    #: "time", "number" or "text": how cursor values are bound back.
    kind: str


def sort_columns(ctx: Context, alias: FromClause, rtype: str, keys: list[SortKey]
                 ) -> list[SortColumn]:
    """Per key, one value per resource: the lowest for ascending, the highest for descending
    order (http://hl7.org/fhir/R4/search.html#_sort); resources without one come last."""
    out = []
    for key in keys:
        if key.param is None:
            col = alias.c.id if key.name == "_id" else alias.c.last_updated
            kind = "text" if key.name == "_id" else "time"
            out.append(SortColumn(_collate(ctx, col) if kind == "text" else col,
                                  key.descending, kind))
            continue
        table = TABLE_OF[key.param.type]
        column, kind = _sort_value(table, key)
        agg = func.max(column) if key.descending else func.min(column)
        sub = select(agg).where(table.c.resource_pk == alias.c.pk, table.c.type == rtype,
                                table.c.param == key.param.code).scalar_subquery()
        last = {"time": (FAR_PAST, FAR_FUTURE), "number": (NUMBER_FIRST, NUMBER_LAST),
                "text": (TEXT_FIRST, TEXT_LAST)}[kind][0 if key.descending else 1]
        expr = func.coalesce(sub, bind(kind, last))
        out.append(SortColumn(_collate(ctx, expr) if kind == "text" else expr,
                              key.descending, kind))
    return out


def _sort_value(table: FromClause, key: SortKey) -> tuple[ColumnElement, str]:
    kind = key.param.type if key.param else ""
    if kind == "date":
        return (table.c.high if key.descending else table.c.low), "time"
    if kind == "number":
        return table.c.value, "number"
    if kind == "quantity":
        return func.coalesce(table.c.canon_value, table.c.value), "number"
    column = {"string": "norm", "token": "code", "reference": "target_id", "uri": "uri"}[kind]
    return table.c[column], "text"


def _collate(ctx: Context, expr: ColumnElement) -> ColumnElement:
    # Code-point order on both databases, whatever the PostgreSQL database's collation.
    return expr.collate("C") if ctx.postgresql else expr


def bind(kind: str, value: object) -> ColumnElement:
    type_ = {"time": DateTime(timezone=True), "number": Float(), "text": String()}[kind]
    return literal(value, type_)


def after(columns: list[SortColumn], pk: ColumnElement, values: list, last_pk: int,
          backwards: bool = False) -> ColumnElement[bool]:
    """Rows strictly after (before, if `backwards`) the row with `values`/`last_pk` in
    the order of `columns` then pk: the keyset condition of cursor paging."""
    clauses = []
    equal: list[ColumnElement[bool]] = []
    for col, value in zip(columns, values, strict=True):
        v = bind(col.kind, value)
        greater = col.descending == backwards
        clauses.append(and_(*equal, col.expr > v if greater else col.expr < v))
        equal.append(col.expr == v)
    clauses.append(and_(*equal, pk < last_pk if backwards else pk > last_pk))
    return or_(*clauses)
