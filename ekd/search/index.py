"""Index rows of a resource: what each search parameter's expression selects, made comparable.

http://hl7.org/fhir/R4/search.html#ptypes. Rows are plain dicts keyed by column, grouped by
index table; the store writes them in the same transaction as the resource. Values are
normalised here, once, so that queries (and the in-memory evaluator of the tests) compare
like with like:

- string: `norm` lower-cased, accents removed, whitespace collapsed.
- date: the half-open UTC range [low, high) a value stands for; a date without a zone is
  taken as UTC. Open ends of a Period are the far past/future.
- quantity: `canon_value`/`canon_code` in the unit ekd compares in, for the UCUM units it
  converts (length, mass, time): a height of 1.2 m matches `gt110|http://unitsofmeasure.org|cm`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from weakref import WeakKeyDictionary

from ekd.fhirpath import Expression, FhirPathError
from ekd.fhirpath.model import Node, resource_node
from ekd.search.parameters import Extractor, SearchParameters
from ekd.search.walk import Fallback, Probe, Walker, passes

UCUM = "http://unitsofmeasure.org"
FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MAX_TEXT = 255

#: UCUM code -> (canonical code, factor): what ekd converts between.
UNITS: dict[str, tuple[str, Decimal]] = {
    "m": ("m", Decimal(1)), "cm": ("m", Decimal("0.01")), "mm": ("m", Decimal("0.001")),
    "km": ("m", Decimal(1000)),
    "g": ("g", Decimal(1)), "kg": ("g", Decimal(1000)), "mg": ("g", Decimal("0.001")),
    "s": ("s", Decimal(1)), "min": ("s", Decimal(60)), "h": ("s", Decimal(3600)),
    "d": ("s", Decimal(86400)), "wk": ("s", Decimal(604800)),
}

Rows = dict[str, list[dict]]
#: A row's values without the parameter name, in `COLUMNS` order (after `param`).
Values = tuple
#: Index rows as tuples, `(param, *values)` in `COLUMNS` order, by index table.
TableRows = dict[str, list[tuple]]

#: The value columns of each index table, in the order of the row tuples: the contract between
#: the row makers here and the store, which writes the tuples as they are.
COLUMNS: dict[str, tuple[str, ...]] = {
    "search_token": ("param", "system", "code", "text"),
    "search_string": ("param", "norm", "exact"),
    "search_date": ("param", "low", "high"),
    "search_number": ("param", "value"),
    "search_quantity": ("param", "system", "code", "value", "canon_code", "canon_value"),
    "search_reference": ("param", "target_type", "target_id", "url"),
    "search_uri": ("param", "uri"),
    "search_composite": ("param", "system", "code", "c2_system", "c2_code", "c2_value",
                         "c2_low", "c2_high", "c2_text"),
}

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_SPACES = re.compile(r"\s+")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]+")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@lru_cache(maxsize=16384)
def normalise(text: str) -> str:
    """Case- and accent-insensitive form of a string (`Ézra  Öztürk` -> `ezra ozturk`)."""
    if text.isascii():  # nothing to decompose, no combining marks; casefold() is lower()
        return _SPACES.sub(" ", text.lower()).strip()[:MAX_TEXT]
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACES.sub(" ", stripped.casefold()).strip()[:MAX_TEXT]


@lru_cache(maxsize=16384)
def date_range(value: str) -> tuple[datetime, datetime] | None:
    """The UTC range [low, high) a FHIR date, dateTime or instant covers; None if unreadable."""
    m = _DATE.match(value.strip())
    if m is None:
        return None
    try:
        y = int(m["y"])
        if m["m"] is None:
            low = datetime(y, 1, 1, tzinfo=UTC)
            return low, _add_years(low, 1)
        mo = int(m["m"])
        if m["d"] is None:
            low = datetime(y, mo, 1, tzinfo=UTC)
            return low, (datetime(y + 1, 1, 1, tzinfo=UTC) if mo == 12
                         else datetime(y, mo + 1, 1, tzinfo=UTC))
        day = datetime(y, mo, int(m["d"]), tzinfo=UTC)
        if m["H"] is None:
            return day, day + timedelta(days=1)
        tz: tzinfo = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][4:6])))
        minute = int(m["M"] or 0)
        local = datetime(y, mo, int(m["d"]), int(m["H"]), minute, int(m["S"] or 0), tzinfo=tz)
        if m["M"] is None:
            step = timedelta(hours=1)
        elif m["S"] is None:
            step = timedelta(minutes=1)
        elif m["f"] is None:
            step = timedelta(seconds=1)
        else:
            digits = min(len(m["f"]), 6)
            local = local.replace(microsecond=int(m["f"][:6].ljust(6, "0")))
            step = timedelta(microseconds=10 ** (6 - digits))
        low = local.astimezone(UTC)
        return low, low + step
    except (ValueError, OverflowError):
        return None


def _add_years(t: datetime, n: int) -> datetime:
    return t.replace(year=t.year + n) if t.year + n <= 9999 else FAR_FUTURE


def canonical_quantity(value: Decimal, system: str | None, code: str | None
                       ) -> tuple[str | None, float | None]:
    if system == UCUM and code in UNITS:
        unit, factor = UNITS[code]
        return unit, float(value * factor)
    return None, None


# -- extraction ------------------------------------------------------------------------------

#: Plans by parameter registry, shared by all indexers of one registry: the store makes an
#: indexer per transaction, and each would otherwise find its plans and shapes afresh.
_PLANS: WeakKeyDictionary[SearchParameters, dict[str, _Plan]] = WeakKeyDictionary()


class Indexer:
    """Turns a resource into index rows for the parameters in force for its type.

    `fast` (the default) evaluates the simple expressions most parameters have with the plain
    walkers of `ekd.search.walk` and the rest with the FHIRPath engine; `fast=False` evaluates
    every expression with the engine. Both give the same rows (tests/test_search_index_fast.py).

    `table_rows` gives the rows as tuples (`COLUMNS`), what the store writes; calling the
    indexer gives the same rows as dicts keyed by column, for code that reads them by name.
    """

    def __init__(self, parameters: SearchParameters, *, fast: bool = True) -> None:
        self.parameters = parameters
        self.fast = fast
        plans = _PLANS.get(parameters)
        if plans is None:
            plans = _PLANS.setdefault(parameters, {})
        self._plans = plans

    def _plan(self, rtype: str) -> _Plan:
        extractors = self.parameters.extractors(rtype)
        plan = self._plans.get(rtype)
        if plan is None or plan.extractors is not extractors:
            plan = self._plans[rtype] = _Plan(extractors)
        return plan

    def __call__(self, content: dict) -> Rows:
        return {table: [dict(zip(COLUMNS[table], row, strict=True)) for row in rows]
                for table, rows in self.table_rows(content).items()}

    def table_rows(self, content: dict) -> TableRows:
        rtype = content.get("resourceType")
        rows: TableRows = {}
        if not isinstance(rtype, str):
            return rows
        if self.fast:
            context = _Context(content, rtype)
            for extractor in self._plan(rtype).relevant(content):
                try:
                    _extract_fast(extractor, context, rows)
                except FhirPathError:
                    continue  # as below
            return rows
        # One typed root for all expressions, and each distinct expression evaluated once:
        # R4 parameters often share a path (`code` and `combo-code`, `subject` and `patient`).
        root = resource_node(content)
        memo: dict[object, list] = {}
        for extractor in self.parameters.extractors(rtype):
            try:
                _extract(extractor, root, memo, rows)
            except FhirPathError:
                # A parameter whose expression fails on this resource indexes nothing for it;
                # the resource itself was valid, so the write goes on.
                continue
        return rows


def _items(extractor: Extractor, root: Node, memo: dict[object, list]
           ) -> Iterator[tuple[object, str | None]]:
    for expression, target in extractor.branches:
        items = memo.get(expression.expression)
        if items is None:
            items = memo[expression.expression] = expression.items(root)
        for item in items:
            yield item, target


def _extract(extractor: Extractor, root: Node, memo: dict[object, list],
             rows: TableRows) -> None:
    param = extractor.param
    code = param.code
    kind = param.type
    seen: set[tuple] = set()

    def add(table: str, suffix: str, values: Values) -> None:
        name = code + suffix
        key = (table, name, values)
        if key not in seen:
            seen.add(key)
            rows.setdefault(table, []).append((name, *values))

    if kind == "composite":
        for item, _ in _items(extractor, root, memo):
            for values in _composite_rows(extractor, item, memo):
                add("search_composite", "", values)
        return
    for item, target in _items(extractor, root, memo):
        node_type, data = _typed(item)
        if data is not None:
            for table, suffix, values in _typed_rows(kind, node_type, data, target):
                add(table, suffix, values)


# -- the fast path: walkers where they apply, items as (type, data, path) ----------------------

Item = tuple[str, object, "str | None"]


class _Plan:
    """The extractors of one resource type, found by the resource keys they need."""

    __slots__ = ("always", "by_key", "by_shape", "extractors", "probes")

    #: Resources of a type come in few shapes (sets of top-level keys): the candidates per
    #: shape are kept, up to this many shapes.
    SHAPES = 256

    def __init__(self, extractors: list[Extractor]) -> None:
        self.extractors = extractors
        self.always: list[int] = []
        self.by_key: dict[str, list[int]] = {}
        #: Position -> what to look for below the top-level key, for those that say.
        self.probes: dict[int, Probe] = {}
        self.by_shape: dict[tuple, list[tuple[Extractor, Probe | None]]] = {}
        for i, extractor in enumerate(extractors):
            needs = extractor.needs
            if needs is None:
                self.always.append(i)
                continue
            for key in needs:
                self.by_key.setdefault(key, []).append(i)
            if any(sub is not None for sub in needs.values()):
                self.probes[i] = needs

    def relevant(self, content: dict) -> list[Extractor]:
        """The extractors that can index something of `content`, in their order."""
        shape = tuple(content)
        candidates = self.by_shape.get(shape)
        if candidates is None:
            candidates = self._candidates(shape)
            if len(self.by_shape) < self.SHAPES:
                self.by_shape[shape] = candidates
        return [extractor for extractor, probe in candidates
                if probe is None or passes(probe, content)]

    def _candidates(self, keys: tuple) -> list[tuple[Extractor, Probe | None]]:
        by_key = self.by_key
        found = set(self.always)
        for key in keys:
            positions = by_key.get(key)
            if positions is not None:
                found.update(positions)
        return [(self.extractors[i], self.probes.get(i)) for i in sorted(found)]


class _Context:
    """One resource being indexed: its root item, its engine root (made when first needed)
    and the memo of items per expression and of component values per element."""

    __slots__ = ("_node", "content", "memo", "root")

    def __init__(self, content: dict, rtype: str) -> None:
        self.content = content
        self.root: Item = (rtype, content, rtype)
        self._node: Node | None = None
        self.memo: dict[object, list] = {}

    def node(self) -> Node:
        if self._node is None:
            self._node = resource_node(self.content)
        return self._node


def _as_items(items: list) -> list[Item]:
    return [(x.type, x.data, x.path) if type(x) is Node else (*_typed(x), None) for x in items]


def _evaluate(expression: Expression, walker: Walker | None, context: _Context) -> list[Item]:
    if walker is not None:
        try:
            return walker.walk_from(context.root)
        except Fallback:
            pass
    return _as_items(expression.items(context.node()))


#: (table, name suffix, values): one distinct row of a parameter, without its name.
Entry = tuple[str, str, Values]


def _extract_fast(extractor: Extractor, context: _Context, rows: TableRows) -> None:
    code = extractor.param.code
    memo = context.memo
    steps = extractor.steps
    # Rows are told apart by (table, suffix, values): the parameter name is code + suffix.
    seen: set[Entry] | None = set() if len(steps) > 1 else None
    for expression, target, walker, entries_key in steps:
        # Parameters that share a path share its rows too (`code` and `combo-code`): they are
        # made once per resource, without the parameter name and without duplicates.
        entries = memo.get(entries_key)
        if entries is None:
            items = memo.get(expression.expression)
            if items is None:
                items = memo[expression.expression] = _evaluate(expression, walker, context)
            entries = []
            try:
                _entries(extractor, items, target, memo, entries)
            except FhirPathError:
                _add(code, entries, seen, rows)  # what came before the failure stays
                raise
            memo[entries_key] = entries
        _add(code, entries, seen, rows)


def _entries(extractor: Extractor, items: list[Item], target: str | None, memo: dict,
             out: list[Entry]) -> None:
    """Each distinct row the items give, in order."""
    kind = extractor.param.type
    keys: set[Entry] = set()
    if kind == "composite":
        for _, data, path in items:
            if data is None:
                continue
            for values in _composite_fast(extractor, data, path, memo):
                entry = ("search_composite", "", values)
                if entry not in keys:
                    keys.add(entry)
                    out.append(entry)
        return
    make = _MAKERS.get(kind)
    if make is None:
        return
    for node_type, data, _ in items:
        if data is None:
            continue
        for entry in make(node_type, data, target):
            if entry not in keys:
                keys.add(entry)
                out.append(entry)


def _add(code: str, entries: list[Entry], seen: set[Entry] | None, rows: TableRows) -> None:
    for entry in entries:
        if seen is not None:
            if entry in seen:
                continue
            seen.add(entry)
        table, suffix, values = entry
        row = (code + suffix if suffix else code, *values)
        bucket = rows.get(table)
        if bucket is None:
            rows[table] = [row]
        else:
            bucket.append(row)


def _composite_fast(extractor: Extractor, element: object, base: str | None, memo: dict
                    ) -> list[Values]:
    if len(extractor.components) < 2:
        return []
    (kind1, expr1), (kind2, expr2) = extractor.components[:2]
    walker1, walker2 = extractor.component_walkers[:2]
    firsts = _component_fast(memo, kind1, expr1, walker1, element, base)
    seconds = _component_fast(memo, kind2, expr2, walker2, element, base)
    return _pairs(firsts, seconds)


def _component_fast(memo: dict, kind: str, expression: Expression, walker: Walker | None,
                    element: object, base: str | None) -> list[tuple[str, Values]]:
    key = (kind, expression.expression, id(element))
    values = memo.get(key)
    if values is None:
        values = memo[key] = _component_values_fast(kind, expression, walker, element, base)
    return values


def _component_values_fast(kind: str, expression: Expression, walker: Walker | None,
                           element: object, base: str | None) -> list[tuple[str, Values]]:
    if not isinstance(element, dict):
        return []
    items: list[Item] | None = None
    if walker is not None and base:
        root = resource_node(element, base)
        items = walker.walk_or_none((root.type, element, root.path))
    if items is None:
        items = _as_items(expression.items(element, base=base) if base
                          else expression.items(element))
    return [(table, values) for node_type, data, _ in items if data is not None
            for table, suffix, values in _typed_rows(kind, node_type, data, None)
            if not suffix]


# -- row makers: (table, suffix, values) of an item given as its FHIR type and (not None) data --


def value_rows(kind: str, item: object, target: str | None = None
               ) -> Iterator[tuple[str, dict]]:
    """The index rows one FHIRPath item gives for a parameter of type `kind`, as dicts keyed
    by column (with `_suffix`, the parameter name's suffix, where there is one)."""
    node_type, data = _typed(item)
    if data is None:
        return
    for table, suffix, values in _typed_rows(kind, node_type, data, target):
        row = dict(zip(COLUMNS[table][1:], values, strict=True))
        if suffix:
            row["_suffix"] = suffix
        yield table, row


def _typed_rows(kind: str, node_type: str, data: object, target: str | None) -> list[Entry]:
    make = _MAKERS.get(kind)
    return make(node_type, data, target) if make is not None else []


def _token_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    return _token_values(node_type, data)


def _string_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    return [("search_string", "", (normalise(text), text[:MAX_TEXT]))
            for text in string_values(node_type, data)]


def _date_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    return [("search_date", "", bounds) for bounds in date_values(node_type, data)]


def _number_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    number = _decimal(data)
    return [] if number is None else [("search_number", "", (float(number),))]


def _quantity_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    return [("search_quantity", "", values) for values in quantity_values(node_type, data)]


def _reference_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    out: list[Entry] = []
    ref = reference_value(node_type, data)
    if ref is not None:
        if target is not None and ref[0] != target:
            return out
        out.append(("search_reference", "", ref))
    if isinstance(data, dict) and isinstance(data.get("identifier"), dict):
        out.extend(("search_token", ":identifier", values)
                   for _, _, values in _token_values("Identifier", data["identifier"]))
    return out


def _uri_entries(node_type: str, data: object, target: str | None) -> list[Entry]:
    return [("search_uri", "", (data[:MAX_TEXT],))] if isinstance(data, str) else []


_MAKERS: dict[str, Callable[[str, object, str | None], list[Entry]]] = {
    "token": _token_entries,
    "string": _string_entries,
    "date": _date_entries,
    "number": _number_entries,
    "quantity": _quantity_entries,
    "reference": _reference_entries,
    "uri": _uri_entries,
}


def _typed(item: object) -> tuple[str, object]:
    if type(item) is Node:
        return item.type, item.data
    if isinstance(item, bool):
        return "boolean", item
    if isinstance(item, int | Decimal):
        return "decimal", item
    return "string", str(item)


def _decimal(data: object) -> Decimal | None:
    if isinstance(data, bool):
        return None
    if isinstance(data, int | Decimal):
        return Decimal(data)
    if isinstance(data, float):
        return Decimal(repr(data))
    if isinstance(data, str):
        try:
            return Decimal(data)
        except InvalidOperation:
            return None
    return None


def _str(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None


def _token_values(node_type: str, data: object) -> list[Entry]:
    """`search_token` rows: (system, code, text)."""
    if isinstance(data, bool):
        return [("search_token", "", (None, "true" if data else "false", None))]
    if isinstance(data, str):
        return [("search_token", "", (None, data[:MAX_TEXT], None))]
    if not isinstance(data, dict):
        return []
    if node_type == "CodeableConcept" or "coding" in data:
        text = data.get("text")
        out: list[Entry] = [("search_token", "", _coding_values(coding, text))
                            for coding in data.get("coding") or () if isinstance(coding, dict)]
        # `:text` searches CodeableConcept.text too when the codings have displays.
        if isinstance(text, str):
            norm = normalise(text)
            if all(values[2] != norm for _, _, values in out):
                out.append(("search_token", "", (None, None, norm)))
        return out
    if node_type == "Identifier" or ("value" in data and "use" in data) or (
            node_type != "ContactPoint" and "value" in data and "system" in data):
        value, system = _str(data.get("value")), _str(data.get("system"))
        type_text = (data.get("type") or {}).get("text")
        out = []
        if value or system:
            out.append(("search_token", "", (
                system, value, normalise(type_text) if isinstance(type_text, str) else None)))
        # `identifier:of-type=system|code|value`: the identifier's type with its value.
        for coding in (data.get("type") or {}).get("coding") or ():
            if isinstance(coding, dict) and value:
                out.append(("search_token", ":of-type", (
                    _str(coding.get("system")), f"{coding.get('code')}|{value}"[:MAX_TEXT],
                    None)))
        return out
    if node_type == "ContactPoint":
        value = _str(data.get("value"))
        return [("search_token", "", (_str(data.get("system")), value, None))] if value else []
    if "code" in data or "system" in data:  # Coding and Coding-like (Quantity as token)
        return [("search_token", "", _coding_values(data, None))]
    return []


def _coding_values(coding: dict, text: object) -> Values:
    display = coding.get("display") if isinstance(coding.get("display"), str) else text
    return (_str(coding.get("system")), _str(coding.get("code")),
            normalise(display) if isinstance(display, str) else None)


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def string_values(node_type: str, data: object) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        parts = _NAME_PARTS if node_type == "HumanName" else (
            _ADDRESS_PARTS if node_type == "Address" else tuple(data))
        for part in parts:
            value = data.get(part)
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str):
                    yield v


def date_values(node_type: str, data: object) -> Iterator[tuple[datetime, datetime]]:
    if isinstance(data, str):
        r = date_range(data)
        if r is not None:
            yield r
    elif isinstance(data, dict):
        if node_type == "Timing" or "event" in data:
            ranges = [r for e in data.get("event") or () if isinstance(e, str)
                      for r in [date_range(e)] if r is not None]
            bounds = ((data.get("repeat") or {}).get("boundsPeriod"))
            if isinstance(bounds, dict):
                ranges.extend(date_values("Period", bounds))
            if ranges:
                yield min(r[0] for r in ranges), max(r[1] for r in ranges)
        else:  # Period
            start = date_range(data["start"]) if isinstance(data.get("start"), str) else None
            end = date_range(data["end"]) if isinstance(data.get("end"), str) else None
            if start or end:
                yield (start[0] if start else FAR_PAST), (end[1] if end else FAR_FUTURE)


def quantity_values(node_type: str, data: object) -> Iterator[Values]:
    """`search_quantity` rows: (system, code, value, canon_code, canon_value)."""
    if not isinstance(data, dict):
        return
    if node_type == "Range" or "low" in data or "high" in data:
        for bound in ("low", "high"):
            if isinstance(data.get(bound), dict):
                yield from quantity_values("Quantity", data[bound])
        return
    value = _decimal(data.get("value"))
    if value is None:
        return
    system, code = _str(data.get("system")), _str(data.get("code") or data.get("unit"))
    canon_code, canon_value = canonical_quantity(value, system, code)
    yield system, code, float(value), canon_code, canon_value


def reference_value(node_type: str, data: object) -> Values | None:
    """`search_reference` row: (target_type, target_id, url)."""
    ref = data.get("reference") if isinstance(data, dict) else data
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return None
    return parse_reference(ref)


@lru_cache(maxsize=16384)
def parse_reference(ref: str) -> Values:
    """`Patient/1`, `http://x/fhir/Patient/1/_history/2`, canonical `http://x|1.0`, urn:.
    Cached: a dossier names its patient, encounters and practitioners over and over."""
    body = ref.split("/_history/", 1)[0]
    parts = body.rstrip("/").split("/")
    absolute = "://" in ref or ref.startswith("urn:")
    target_type = target_id = None
    if len(parts) >= 2 and _TYPE_NAME.fullmatch(parts[-2]) and _ID.fullmatch(parts[-1]):
        target_type, target_id = parts[-2], parts[-1]
    return target_type, target_id, ref[:MAX_TEXT] if absolute else None


def _column_positions(table: str, *names: str) -> tuple[int | None, ...]:
    columns = COLUMNS[table][1:]
    return tuple(columns.index(n) if n in columns else None for n in names)


#: Where a composite's first component has its system, code and target id, by its table.
_FIRST = {table: _column_positions(table, "system", "code", "target_id") for table in COLUMNS}


def composite_row(first_table: str, first: Values, table: str, second: Values
                  ) -> Values | None:
    """The `search_composite` values of a first component's row (from `first_table`) and a
    second component's row from `table`; None for a second component of a type composites
    do not index."""
    at_system, at_code, at_target = _FIRST[first_table]
    system = first[at_system] if at_system is not None else None
    code = (first[at_code] if at_code is not None else None) or (
        first[at_target] if at_target is not None else None)
    if table == "search_token":
        return system, code, second[0], second[1], None, None, None, None
    if table == "search_quantity":  # as given: the query converts (sql.py)
        return system, code, second[0], second[1], second[2], None, None, None
    if table == "search_number":
        return system, code, None, None, second[0], None, None, None
    if table == "search_date":
        return system, code, None, None, None, second[0], second[1], None
    if table == "search_string":
        return system, code, None, None, None, None, None, second[0]
    if table == "search_reference":
        return system, code, second[0], second[1], None, None, None, None
    return None


def _pairs(firsts: list[tuple[str, Values]], seconds: list[tuple[str, Values]]
           ) -> list[Values]:
    """Composite values of each (first, second) pair of component values."""
    out = []
    for first_table, first in firsts:
        for table, second in seconds:
            row = composite_row(first_table, first, table, second)
            if row is not None:
                out.append(row)
    return out


def _composite_rows(extractor: Extractor, item: object, memo: dict | None = None
                    ) -> list[Values]:
    """Pairs of (first component, second component) values taken from the same element.

    `memo` (per resource) keeps component values by (expression, element): R4's composites
    of one type share components (`code` in every `code-value-*`)."""
    if len(extractor.components) < 2:
        return []
    (kind1, expr1), (kind2, expr2) = extractor.components[:2]
    firsts = _memo_component(memo, kind1, expr1, item)
    seconds = _memo_component(memo, kind2, expr2, item)
    return _pairs(firsts, seconds)


def _memo_component(memo: dict | None, kind: str, expression: Expression, item: object
                    ) -> list[tuple[str, Values]]:
    element = item.data if type(item) is Node else item
    base = item.path if type(item) is Node else None
    if memo is None:
        return _component_values(kind, expression, element, base)
    key = (kind, expression.expression, id(element))
    values = memo.get(key)
    if values is None:
        values = memo[key] = _component_values(kind, expression, element, base)
    return values


def _component_values(kind: str, expression: Expression, element: object, base: str | None
                      ) -> list[tuple[str, Values]]:
    if not isinstance(element, dict):
        return []
    items = expression.items(element, base=base) if base else expression.items(element)
    out = []
    for item in items:
        node_type, data = _typed(item)
        if data is not None:
            out.extend((table, values) for table, suffix, values
                       in _typed_rows(kind, node_type, data, None) if not suffix)
    return out
