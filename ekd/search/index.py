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
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache

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


class Indexer:
    """Turns a resource into index rows for the parameters in force for its type.

    `fast` (the default) evaluates the simple expressions most parameters have with the plain
    walkers of `ekd.search.walk` and the rest with the FHIRPath engine; `fast=False` evaluates
    every expression with the engine. Both give the same rows (tests/test_search_index_fast.py).
    """

    def __init__(self, parameters: SearchParameters, *, fast: bool = True) -> None:
        self.parameters = parameters
        self.fast = fast
        self._plans: dict[str, _Plan] = {}

    def _plan(self, rtype: str) -> _Plan:
        extractors = self.parameters.extractors(rtype)
        plan = self._plans.get(rtype)
        if plan is None or plan.extractors is not extractors:
            plan = self._plans[rtype] = _Plan(extractors)
        return plan

    def __call__(self, content: dict) -> Rows:
        rtype = content.get("resourceType")
        rows: Rows = {}
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


def _extract(extractor: Extractor, root: Node, memo: dict[object, list], rows: Rows) -> None:
    param = extractor.param
    code = param.code
    kind = param.type
    seen: set[tuple] = set()

    def add(table: str, row: dict) -> None:
        name = code + row.pop("_suffix", "")
        key = (table, name, *row.values())
        if key not in seen:
            seen.add(key)
            rows.setdefault(table, []).append({"param": name, **row})

    if kind == "composite":
        for item, _ in _items(extractor, root, memo):
            for row in composite_rows(extractor, item, memo):
                add("search_composite", row)
        return
    for item, target in _items(extractor, root, memo):
        for table, row in value_rows(kind, item, target):
            add(table, row)


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


def _extract_fast(extractor: Extractor, context: _Context, rows: Rows) -> None:
    code = extractor.param.code
    memo = context.memo
    steps = extractor.steps
    # Rows are told apart by (table, suffix, values): the parameter name is code + suffix.
    seen: set[tuple] | None = set() if len(steps) > 1 else None
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


Entry = tuple[str, str, dict, tuple]


def _entries(extractor: Extractor, items: list[Item], target: str | None, memo: dict,
             out: list[Entry]) -> None:
    """(table, suffix, row, key) of each distinct row the items give, in order."""
    kind = extractor.param.type
    composite = kind == "composite"
    keys: set[tuple] = set()
    for node_type, data, path in items:
        if data is None:
            continue
        produced = (_composite_fast(extractor, data, path, memo) if composite
                    else _typed_rows(kind, node_type, data, target))
        for table, row in produced:
            suffix = row.pop("_suffix", "")
            key = (table, suffix, *row.values())
            if key not in keys:
                keys.add(key)
                out.append((table, suffix, row, key))


def _add(code: str, entries: list[Entry], seen: set[tuple] | None, rows: Rows) -> None:
    for table, suffix, row, key in entries:
        if seen is not None:
            if key in seen:
                continue
            seen.add(key)
        name = code + suffix if suffix else code
        bucket = rows.get(table)
        if bucket is None:
            rows[table] = [{"param": name, **row}]
        else:
            bucket.append({"param": name, **row})


def _composite_fast(extractor: Extractor, element: object, base: str | None, memo: dict
                    ) -> Iterator[tuple[str, dict]]:
    if len(extractor.components) < 2:
        return
    (kind1, expr1), (kind2, expr2) = extractor.components[:2]
    walker1, walker2 = extractor.component_walkers[:2]
    firsts = _component_fast(memo, kind1, expr1, walker1, element, base)
    seconds = _component_fast(memo, kind2, expr2, walker2, element, base)
    for _, first in firsts:
        for table, second in seconds:
            row = composite_row(first, table, second)
            if row is not None:
                yield "search_composite", row


def _component_fast(memo: dict, kind: str, expression: Expression, walker: Walker | None,
                    element: object, base: str | None) -> list[tuple[str, dict]]:
    key = (kind, expression.expression, id(element))
    values = memo.get(key)
    if values is None:
        values = memo[key] = _component_values_fast(kind, expression, walker, element, base)
    return values


def _component_values_fast(kind: str, expression: Expression, walker: Walker | None,
                           element: object, base: str | None) -> list[tuple[str, dict]]:
    if not isinstance(element, dict):
        return []
    items: list[Item] | None = None
    if walker is not None and base:
        root = resource_node(element, base)
        items = walker.walk_or_none((root.type, element, root.path))
    if items is None:
        items = _as_items(expression.items(element, base=base) if base
                          else expression.items(element))
    return [(table, row) for node_type, data, _ in items if data is not None
            for table, row in _typed_rows(kind, node_type, data, None) if "_suffix" not in row]


def value_rows(kind: str, item: object, target: str | None = None
               ) -> Iterator[tuple[str, dict]]:
    """The index rows one FHIRPath item gives for a parameter of type `kind`."""
    node_type, data = _typed(item)
    if data is None:
        return
    yield from _typed_rows(kind, node_type, data, target)


def _typed_rows(kind: str, node_type: str, data: object, target: str | None
                ) -> Iterator[tuple[str, dict]]:
    """The index rows of an item given as its FHIR type and (not None) data."""
    if kind == "token":
        for row in token_values(node_type, data):
            yield "search_token", row
    elif kind == "string":
        for text in string_values(node_type, data):
            yield "search_string", {"norm": normalise(text), "exact": text[:MAX_TEXT]}
    elif kind == "date":
        for low, high in date_values(node_type, data):
            yield "search_date", {"low": low, "high": high}
    elif kind == "number":
        number = _decimal(data)
        if number is not None:
            yield "search_number", {"value": float(number)}
    elif kind == "quantity":
        for row in quantity_values(node_type, data):
            yield "search_quantity", row
    elif kind == "reference":
        ref = reference_value(node_type, data)
        if ref is not None:
            if target is not None and ref["target_type"] != target:
                return
            yield "search_reference", ref
        if isinstance(data, dict) and isinstance(data.get("identifier"), dict):
            for row in token_values("Identifier", data["identifier"]):
                yield "search_token", {**row, "_suffix": ":identifier"}
    elif kind == "uri" and isinstance(data, str):
        yield "search_uri", {"uri": data[:MAX_TEXT]}


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


def token_values(node_type: str, data: object) -> Iterator[dict]:
    if isinstance(data, bool):
        yield {"system": None, "code": "true" if data else "false", "text": None}
    elif isinstance(data, str):
        yield {"system": None, "code": data[:MAX_TEXT], "text": None}
    elif isinstance(data, dict):
        if node_type == "CodeableConcept" or "coding" in data:
            text = data.get("text")
            rows = [_coding_row(coding, text) for coding in data.get("coding") or ()
                    if isinstance(coding, dict)]
            yield from rows
            # `:text` searches CodeableConcept.text too when the codings have displays.
            if isinstance(text, str) and all(r["text"] != normalise(text) for r in rows):
                yield {"system": None, "code": None, "text": normalise(text)}
        elif node_type == "Identifier" or ("value" in data and "use" in data) or (
                node_type != "ContactPoint" and "value" in data and "system" in data):
            value, system = _str(data.get("value")), _str(data.get("system"))
            type_text = (data.get("type") or {}).get("text")
            if value or system:
                yield {"system": system, "code": value,
                       "text": normalise(type_text) if isinstance(type_text, str) else None}
            # `identifier:of-type=system|code|value`: the identifier's type with its value.
            for coding in (data.get("type") or {}).get("coding") or ():
                if isinstance(coding, dict) and value:
                    yield {"system": _str(coding.get("system")),
                           "code": f"{coding.get('code')}|{value}"[:MAX_TEXT], "text": None,
                           "_suffix": ":of-type"}
        elif node_type == "ContactPoint":
            value = _str(data.get("value"))
            if value:
                yield {"system": _str(data.get("system")), "code": value, "text": None}
        elif "code" in data or "system" in data:  # Coding and Coding-like (Quantity as token)
            yield _coding_row(data, None)


def _coding_row(coding: dict, text: object) -> dict:
    display = coding.get("display") if isinstance(coding.get("display"), str) else text
    return {"system": _str(coding.get("system")), "code": _str(coding.get("code")),
            "text": normalise(display) if isinstance(display, str) else None}


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


def quantity_values(node_type: str, data: object) -> Iterator[dict]:
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
    yield {"system": system, "code": code, "value": float(value),
           "canon_code": canon_code, "canon_value": canon_value}


def reference_value(node_type: str, data: object) -> dict | None:
    ref = data.get("reference") if isinstance(data, dict) else data
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return None
    return parse_reference(ref)


def parse_reference(ref: str) -> dict:
    """`Patient/1`, `http://x/fhir/Patient/1/_history/2`, canonical `http://x|1.0`, urn:."""
    body = ref.split("/_history/", 1)[0]
    parts = body.rstrip("/").split("/")
    absolute = "://" in ref or ref.startswith("urn:")
    target_type = target_id = None
    if len(parts) >= 2 and _TYPE_NAME.fullmatch(parts[-2]) and _ID.fullmatch(parts[-1]):
        target_type, target_id = parts[-2], parts[-1]
    return {"target_type": target_type, "target_id": target_id,
            "url": ref[:MAX_TEXT] if absolute else None}


def composite_row(first: dict, table: str, second: dict) -> dict | None:
    """The `search_composite` row of a first component's token row and a second component's
    row from `table`; None for a second component of a type composites do not index."""
    row = {"system": first.get("system"), "code": first.get("code") or first.get(
        "target_id"), "c2_system": None, "c2_code": None, "c2_value": None,
        "c2_low": None, "c2_high": None, "c2_text": None}
    if table == "search_token":
        row.update(c2_system=second["system"], c2_code=second["code"])
    elif table == "search_quantity":  # as given: the query converts (sql.py)
        row.update(c2_system=second["system"], c2_code=second["code"],
                   c2_value=second["value"])
    elif table == "search_number":
        row.update(c2_value=second["value"])
    elif table == "search_date":
        row.update(c2_low=second["low"], c2_high=second["high"])
    elif table == "search_string":
        row.update(c2_text=second["norm"])
    elif table == "search_reference":
        row.update(c2_code=second["target_id"], c2_system=second["target_type"])
    else:
        return None
    return row


def composite_rows(extractor: Extractor, item: object, memo: dict | None = None
                   ) -> Iterator[dict]:
    """Pairs of (first component, second component) values taken from the same element.

    `memo` (per resource) keeps component values by (expression, element): R4's composites
    of one type share components (`code` in every `code-value-*`)."""
    if len(extractor.components) < 2:
        return
    (kind1, expr1), (kind2, expr2) = extractor.components[:2]
    firsts = _memo_component(memo, kind1, expr1, item)
    seconds = _memo_component(memo, kind2, expr2, item)
    for _, first in firsts:
        for table, second in seconds:
            row = composite_row(first, table, second)
            if row is not None:
                yield row


def _memo_component(memo: dict | None, kind: str, expression: Expression, item: object
                    ) -> list[tuple[str, dict]]:
    element = item.data if type(item) is Node else item
    base = item.path if type(item) is Node else None
    if memo is None:
        return list(_component_values(kind, expression, element, base))
    key = (kind, expression.expression, id(element))
    values = memo.get(key)
    if values is None:
        values = memo[key] = list(_component_values(kind, expression, element, base))
    return values


def _component_values(kind: str, expression: Expression, element: object, base: str | None
                      ) -> Iterable[tuple[str, dict]]:
    if not isinstance(element, dict):
        return ()
    items = expression.items(element, base=base) if base else expression.items(element)
    return [(table, row) for item in items for table, row in value_rows(kind, item)
            if "_suffix" not in row]
