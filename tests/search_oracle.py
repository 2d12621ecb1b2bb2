"""A straightforward in-memory evaluator of FHIR search, to check ekd's SQL against.

It takes the query tree from ekd's parser and the values each parameter selects from ekd's
indexer (`ekd.search.index`; `:missing`, `:text` and composites look at the resource itself),
and does everything else in plain Python, following http://hl7.org/fhir/R4/search.html as
the docstring of `ekd.search.sql` states it:

- a resource matches when every criterion (AND) has some value (OR) some indexed item matches;
- dates are ranges [low, high) compared with the search value's range [sl, sh); numbers and
  quantities are points, compared with the search value (eq/ne: with its precision range);
- quantities in a UCUM unit of the same dimension compare after conversion (own table here);
- references to this server, relative or absolute, are local; chains and `_has` look at
  the live resources of the other type;
- `_sort`: per key the lowest value (ascending) or highest (descending), dates by their low
  (ascending) or high (descending) end, resources without a value last, ties by insertion.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ekd.fhirpath import Expression
from ekd.search.index import FAR_FUTURE, FAR_PAST, Indexer, normalise, value_rows
from ekd.search.parameters import Extractor, SearchParameters
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
    SearchQuery,
    SortKey,
    Token,
)

UCUM = "http://unitsofmeasure.org"
#: UCUM unit -> (dimension's base unit, factor), written out independently of ekd's table.
CONVERT = {
    "mm": ("m", Decimal("0.001")), "cm": ("m", Decimal("0.01")), "m": ("m", Decimal(1)),
    "km": ("m", Decimal(1000)),
    "mg": ("g", Decimal("0.001")), "g": ("g", Decimal(1)), "kg": ("g", Decimal(1000)),
    "s": ("s", Decimal(1)), "min": ("s", Decimal(60)), "h": ("s", Decimal(3600)),
    "d": ("s", Decimal(86400)), "wk": ("s", Decimal(604800)),
}
TABLE = {"token": "search_token", "string": "search_string", "date": "search_date",
         "number": "search_number", "quantity": "search_quantity",
         "reference": "search_reference", "uri": "search_uri"}


class Oracle:
    def __init__(self, parameters: SearchParameters, resources: list[dict], base: str,
                 expand: Callable[[str], list[tuple[str | None, str]]] | None = None,
                 last_updated: dict[tuple[str, str], datetime] | None = None) -> None:
        """`resources`: the live (not deleted) resources, in the order they were created;
        `last_updated`: their stored instants by (type, id), if finer than meta.lastUpdated."""
        self.parameters = parameters
        self.resources = resources
        self.base = base.rstrip("/") + "/"
        self.expand = expand
        self.last_updated = last_updated or {}
        indexer = Indexer(parameters)
        self.rows = [indexer(r) for r in resources]

    # -- the answer ---------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> list[str]:
        hits = [i for i, r in enumerate(self.resources) if r["resourceType"] == query.type
                and all(self.matches(i, node) for node in query.criteria)]
        hits.sort(key=functools.cmp_to_key(lambda a, b: self._compare(a, b, query.sort)))
        return [self.resources[i]["id"] for i in hits]

    # -- matching -----------------------------------------------------------------------------

    def _values(self, i: int, table: str, param: str) -> list[dict]:
        return [row for row in self.rows[i].get(table, ()) if row["param"] == param]

    def matches(self, i: int, node: Node) -> bool:
        resource = self.resources[i]
        if isinstance(node, Chain):
            return any(
                self._local(ref) and ref["target_type"] in node.inner
                and any(self.matches(j, node.inner[ref["target_type"]])
                        for j, target in enumerate(self.resources)
                        if target["resourceType"] == ref["target_type"]
                        and target["id"] == ref["target_id"])
                for ref in self._values(i, "search_reference", node.param.code))
        if isinstance(node, Has):
            return any(
                source["resourceType"] == node.source_type and self.matches(j, node.inner)
                and any(self._local(ref) and ref["target_type"] == resource["resourceType"]
                        and ref["target_id"] == resource["id"]
                        for ref in self._values(j, "search_reference", node.param.code))
                for j, source in enumerate(self.resources))
        return self._criterion(i, node)

    def _criterion(self, i: int, c: Criterion) -> bool:
        resource = self.resources[i]
        if c.type == "_id":
            if c.modifier == "missing":
                return not c.missing
            return resource["id"] in c.values
        if c.type == "_lastUpdated":
            t = self._updated(i)
            return any(date_matches(t, t + timedelta(microseconds=1), v) for v in c.values)
        assert c.param is not None, c
        code = c.param.code
        if c.modifier == "missing":
            return self._has_value(i, code) != c.missing
        if c.type == "token" and c.modifier in ("not", "not-in"):
            positive = Criterion(c.name, c.param, c.type,
                                 "in" if c.modifier == "not-in" else None, c.values)
            return not self._criterion(i, positive)
        if c.type == "composite":
            return any(self._composite(i, c, v) for v in c.values)
        if c.type == "reference" and c.modifier == "identifier":
            rows = self._values(i, "search_token", code + ":identifier")
            return any(token_matches(row, v) for row in rows for v in c.values)
        if c.type == "token" and c.modifier == "text":
            texts = [normalise(t) for t in self._texts(i, code)]
            return any(t.startswith(v) for t in texts for v in c.values)  # type: ignore[arg-type]
        if c.type == "token" and c.modifier == "of-type":
            rows = self._values(i, "search_token", code + ":of-type")
            return any(token_matches(row, v) for row in rows for v in c.values)
        rows = self._values(i, TABLE[c.type], code)
        return any(self._value_matches(c.type, c.modifier, row, v)
                   for row in rows for v in c.values)

    def _value_matches(self, kind: str, modifier: str | None, row: dict, v: object) -> bool:
        if kind == "string":
            assert isinstance(v, str)
            if modifier == "exact":
                return row["exact"] == v
            if modifier == "contains":
                return v in row["norm"]
            return row["norm"].startswith(v)
        if kind == "token":
            if modifier == "in":
                assert isinstance(v, str) and self.expand is not None
                return (row["system"], row["code"]) in set(self.expand(v))
            assert isinstance(v, Token)
            return token_matches(row, v)
        if kind == "date":
            assert isinstance(v, DateValue)
            return date_matches(row["low"], row["high"], v)
        if kind == "number":
            assert isinstance(v, NumberValue)
            return number_matches(exact(row["value"]), v)
        if kind == "quantity":
            assert isinstance(v, QuantityValue)
            return quantity_matches(row, v)
        if kind == "reference":
            assert isinstance(v, ReferenceValue)
            return self._reference_matches(row, v)
        if kind == "uri":
            assert isinstance(v, str)
            uri = row["uri"]
            if modifier == "below":
                return uri.startswith(v)
            if modifier == "above":
                return v == uri or v.startswith(uri + "/")
            return uri == v
        raise AssertionError(kind)

    def _local(self, row: dict) -> bool:
        """A reference to a resource of this server: relative, or absolute under its base
        ("a relative reference resolving to the same value as a specified absolute URL, or
        vice versa, qualifies as a match": http://hl7.org/fhir/R4/search.html#reference)."""
        return row["url"] is None or row["url"].startswith(self.base)

    def _reference_matches(self, row: dict, v: ReferenceValue) -> bool:
        if v.url is not None:
            if row["url"] is not None and (row["url"] == v.url
                                           or row["url"].startswith(v.url + "|")):
                return True  # the same absolute reference, or a version of a canonical
            if v.url.startswith(self.base):  # a URL on this server names a local resource
                name = v.url[len(self.base):].split("/_history/")[0]
                return self._local(row) and name == f"{row['target_type']}/{row['target_id']}"
            return False
        return (self._local(row) and row["target_id"] == v.id
                and (v.type is None or row["target_type"] == v.type))

    def _extractor(self, i: int, code: str) -> Extractor:
        return next(e for e in self.parameters.extractors(self.resources[i]["resourceType"])
                    if e.param.code == code)

    def _has_value(self, i: int, code: str) -> bool:
        """The parameter's expression selects something (`:missing`); where it keeps only
        references to one type, a reference to another type does not count."""
        for expression, target in self._extractor(i, code).branches:
            for item in expression.items(self.resources[i]):
                ref = getattr(item, "data", None)
                ref = ref.get("reference") if isinstance(ref, dict) else None
                if target is None or ref is None or ref.split("/")[-2:-1] == [target]:
                    return True
        return False

    def _texts(self, i: int, code: str) -> list[str]:
        """What `:text` searches: CodeableConcept.text, Coding.display, Identifier.type.text
        (http://hl7.org/fhir/R4/search.html#modifiers), read from the resource itself."""
        out: list[object] = []
        for expression, _ in self._extractor(i, code).branches:
            for item in expression.items(self.resources[i]):
                data = getattr(item, "data", None)
                if not isinstance(data, dict):
                    continue
                if item.type == "Identifier":
                    out.append((data.get("type") or {}).get("text"))
                elif item.type == "Coding":
                    out.append(data.get("display"))
                else:
                    out += [data.get("text"), *(c.get("display") for c in data.get("coding", ()))]
        return [t for t in out if isinstance(t, str)]

    def _composite(self, i: int, c: Criterion, v: object) -> bool:
        """Some element the parameter selects has a first component matching v.first and a
        second matching v.second (evaluated per element, not from ekd's composite rows)."""
        assert isinstance(v, CompositeValue) and c.param is not None
        extractor = self._extractor(i, c.param.code)
        (kind1, expr1), (kind2, expr2) = extractor.components[:2]
        for expression, _ in extractor.branches:
            for element in expression.items(self.resources[i]):
                firsts = _component(kind1, expr1, element)
                seconds = _component(kind2, expr2, element)
                if any(token_matches(row, v.first) for row in firsts) and any(
                        self._value_matches(kind2, None, row, v.second) for row in seconds):
                    return True
        return False

    # -- sorting ------------------------------------------------------------------------------

    def _updated(self, i: int) -> datetime:
        r = self.resources[i]
        return self.last_updated.get((r["resourceType"], r["id"])) or datetime.fromisoformat(
            r["meta"]["lastUpdated"].replace("Z", "+00:00"))

    def _sort_value(self, i: int, key: SortKey) -> object:
        resource = self.resources[i]
        if key.param is None:
            if key.name == "_id":
                return resource["id"]
            return self._updated(i)
        kind = key.param.type
        rows = self._values(i, TABLE[kind], key.param.code)
        if kind == "date":
            values = [row["high"] if key.descending else row["low"] for row in rows]
        elif kind == "quantity":
            values = [canonical(row)[1] if canonical(row) else exact(row["value"])
                      for row in rows]
        else:
            column = {"string": "norm", "token": "code", "reference": "target_id",
                      "uri": "uri", "number": "value"}[kind]
            values = [row[column] for row in rows if row[column] is not None]
        if not values:
            return None
        return max(values) if key.descending else min(values)

    def _compare(self, a: int, b: int, keys: list[SortKey]) -> int:
        for key in keys:
            va, vb = self._sort_value(a, key), self._sort_value(b, key)
            if va == vb:
                continue
            if va is None:
                return 1  # without a value: last, in either direction
            if vb is None:
                return -1
            order = -1 if va < vb else 1  # type: ignore[operator]
            return -order if key.descending else order
        return -1 if a < b else (1 if a > b else 0)


def _component(kind: str, expression: Expression, element: Any) -> list[dict]:
    """The index values of one component of a composite, within one element."""
    if not isinstance(element.data, dict):
        return []
    return [row for item in expression.items(element.data, base=element.path)
            for _, row in value_rows(kind, item) if "_suffix" not in row]


# -- comparisons -----------------------------------------------------------------------------


def exact(x: float) -> Decimal:
    """The decimal a stored float was written from (the values in the tests are short)."""
    return Decimal(repr(x))


def token_matches(row: dict, v: Token) -> bool:
    if v.code is not None and row["code"] != v.code:
        return False
    if v.no_system:
        return row["system"] is None
    return v.system is None or row["system"] == v.system


def date_matches(low: datetime, high: datetime, v: DateValue) -> bool:
    sl, sh = v.low, v.high
    inside = sl <= low and high <= sh  # the search range contains the value's range
    return {
        "eq": lambda: inside,
        "ne": lambda: not inside,
        "gt": lambda: high > sh,  # overlaps the range above the search range
        "lt": lambda: low < sl,
        "ge": lambda: high > sh or inside,
        "le": lambda: low < sl or inside,
        "sa": lambda: low >= sh,  # wholly after
        "eb": lambda: high <= sl,  # wholly before
        "ap": lambda: _overlaps_widened(low, high, sl, sh),
    }[v.prefix]()


def _overlaps_widened(low: datetime, high: datetime, sl: datetime, sh: datetime) -> bool:
    mid = sl + (sh - sl) / 2
    gap = max(abs(datetime.now(UTC) - mid) / 10, timedelta(days=1))
    wl = sl - gap if sl - FAR_PAST > gap else FAR_PAST
    wh = sh + gap if FAR_FUTURE - sh > gap else FAR_FUTURE
    return low < wh and high > wl


def number_matches(x: Decimal, v: NumberValue, factor: Decimal = Decimal(1)) -> bool:
    value, lo, hi = v.value * factor, v.low * factor, v.high * factor
    return {
        "eq": lambda: lo <= x < hi,
        "ne": lambda: not lo <= x < hi,
        "gt": lambda: x > value, "sa": lambda: x > value,
        "lt": lambda: x < value, "eb": lambda: x < value,
        "ge": lambda: x >= value, "le": lambda: x <= value,
        "ap": lambda: abs(x - value) <= abs(value) / 10,
    }[v.prefix]()


def canonical(row: dict) -> tuple[str, Decimal] | None:
    """A stored quantity in its dimension's base unit, if it is in a UCUM unit we convert."""
    if row["system"] == UCUM and row["code"] in CONVERT:
        unit, factor = CONVERT[row["code"]]
        return unit, exact(row["value"]) * factor
    return None


def quantity_matches(row: dict, v: QuantityValue) -> bool:
    if v.system == UCUM and v.code in CONVERT:
        unit, factor = CONVERT[v.code]
        stored = canonical(row)
        return stored is not None and stored[0] == unit and number_matches(
            stored[1], v.number, factor)
    if v.code is not None and row["code"] != v.code:
        return False
    if v.system is not None and row["system"] != v.system:
        return False
    return number_matches(exact(row["value"]), v.number)
