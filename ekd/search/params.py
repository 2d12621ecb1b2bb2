"""Parsing search parameters into a query (http://hl7.org/fhir/R4/search.html).

The result is a tree the SQL compiler (`ekd.search.sql`) and the tests' in-memory evaluator
both walk: AND of `Criterion`s (one per parameter occurrence), each an OR of values; a
`Chain` follows a reference parameter to a criterion on the target; a `Has` turns one round
(`_has:Observation:patient:code=...`). Values are parsed here, once, so that a bad value is a
400 naming the parameter before any SQL runs.

Unknown parameters are ignored with a warning, or rejected under `Prefer: handling=strict`
(http://hl7.org/fhir/R4/search.html#errors). An unsupported modifier on a known parameter is
always rejected: ignoring it would widen the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from ekd.errors import InvalidRequest, Issue
from ekd.fhir.resource_types import is_resource_type
from ekd.search.index import date_range, normalise
from ekd.search.parameters import SearchParam, SearchParameters

#: Result parameters (http://hl7.org/fhir/R4/search.html#return).
CONTROL = frozenset({
    "_count", "_offset", "_summary", "_elements", "_total", "_format", "_pretty", "_sort",
    "_include", "_revinclude", "_cursor", "_contained", "_containedType",
})
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "of-type", "in", "not-in", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "reference": frozenset({"missing", "identifier"}),  # and :[type]
    "uri": frozenset({"below", "above", "missing"}),
    "composite": frozenset({"missing"}),
}

_SPLIT_COMMA = re.compile(r"(?<!\\),")
_SPLIT_PIPE = re.compile(r"(?<!\\)\|")
_SPLIT_DOLLAR = re.compile(r"(?<!\\)\$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def unescape(value: str) -> str:
    return value.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$").replace("\\\\", "\\")


def split_or(raw: str) -> list[str]:
    return _SPLIT_COMMA.split(raw)


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    system: str | None  # None: any system
    code: str | None  # None: any code
    no_system: bool = False  # `|code`: the code must have no system


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    prefix: str
    value: Decimal
    #: The range the value's precision implies: 100 is [99.5, 100.5).
    low: Decimal
    high: Decimal


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class CompositeValue:
    first: Token
    second: object  # a value of the second component's type


Value = object


@dataclass
class Criterion:
    """`name[:modifier]=v1,v2` on one parameter: true when any value matches."""

    name: str
    param: SearchParam | None  # None for _id, _lastUpdated and _list
    type: str
    modifier: str | None
    values: list[Value]
    #: :missing=true/false
    missing: bool | None = None
    #: For composites: the second component's parameter type.
    second_type: str | None = None


@dataclass
class Chain:
    """`subject:Patient.name=x`: resources whose reference param points at a match."""

    name: str
    param: SearchParam
    #: target type -> criterion on that type (several when the target type is left open)
    inner: dict[str, Criterion | Chain | Has]


@dataclass
class Has:
    """`_has:Observation:patient:code=x`: resources that a matching resource refers to."""

    source_type: str
    param: SearchParam
    inner: Criterion | Chain | Has


Node = Criterion | Chain | Has


@dataclass(frozen=True, slots=True)
class SortKey:
    name: str
    param: SearchParam | None  # None for _id and _lastUpdated
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str | None  # None for *
    param: SearchParam | None  # None for *
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class SearchQuery:
    type: str
    criteria: list[Node] = field(default_factory=list)
    count: int | None = None
    offset: int = 0
    cursor: str | None = None
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    total: str | None = None
    warnings: list[Issue] = field(default_factory=list)
    #: The parameters that shaped the result, echoed in the self link.
    used: list[tuple[str, str]] = field(default_factory=list)


# -- parsing ---------------------------------------------------------------------------------


def _bad(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Search parameter '{name}': {why}", expression=name)


def parse_token(value: str) -> Token:
    parts = _SPLIT_PIPE.split(value, maxsplit=1)
    if len(parts) == 1:
        return Token(None, unescape(parts[0]) or None)
    system, code = parts
    return Token(unescape(system) or None, unescape(code) or None, no_system=(system == ""))


def _prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in PREFIXES and not raw[2:3].isalpha():
        return raw[:2], raw[2:]
    return "eq", raw


def parse_date(name: str, raw: str) -> DateValue:
    prefix, text = _prefix(raw)
    # An unencoded "+" of a time zone arrives as a space.
    r = date_range(text.replace(" ", "+"))
    if r is None:
        raise _bad(name, f"'{raw}' is not a date such as 2024-05-01 or 2024-05-01T10:00:00Z")
    return DateValue(prefix, r[0], r[1])


def parse_number(name: str, raw: str) -> NumberValue:
    prefix, text = _prefix(raw)
    if not _NUMBER.match(text):
        raise _bad(name, f"'{raw}' is not a number")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise _bad(name, f"'{raw}' is not a number") from None
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return NumberValue(prefix, value, value - half, value + half)


def parse_quantity(name: str, raw: str) -> QuantityValue:
    parts = _SPLIT_PIPE.split(raw)
    if len(parts) not in (1, 3):
        raise _bad(name, f"'{raw}' is not [prefix]number|system|code")
    number = parse_number(name, parts[0])
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)


def parse_reference(raw: str, type_modifier: str | None) -> ReferenceValue:
    value = unescape(raw)
    if "://" in value or value.startswith("urn:"):
        return ReferenceValue(None, None, value)
    body = value.split("/_history/", 1)[0]
    if "/" in body:
        rtype, _, rid = body.rpartition("/")
        return ReferenceValue(rtype.rsplit("/", 1)[-1], rid, None)
    return ReferenceValue(type_modifier, body, None)


class Parser:
    def __init__(self, parameters: SearchParameters, *, strict: bool = False,
                 max_count: int = 1000) -> None:
        self.parameters = parameters
        self.strict = strict
        self.max_count = max_count

    def parse(self, rtype: str, params: list[tuple[str, str]]) -> SearchQuery:
        query = SearchQuery(type=rtype)
        for name, raw in params:
            base = name.split(":", 1)[0]
            if base in CONTROL:
                self._control(query, name, raw)
                continue
            try:
                node = self.criterion(rtype, name, raw)
            except _Unknown as unknown:
                self._ignore(query, name, str(unknown))
                continue
            query.criteria.append(node)
            query.used.append((name, raw))
        return query

    # -- control parameters -----------------------------------------------------------------

    def _control(self, query: SearchQuery, name: str, raw: str) -> None:
        base, _, modifier = name.partition(":")
        if base == "_count":
            query.count = min(whole_number("_count", raw, 0), self.max_count)
        elif base == "_offset":
            query.offset = whole_number("_offset", raw, 0)
            return
        elif base == "_cursor":
            query.cursor = raw
            return
        elif base == "_summary":
            if raw not in {"true", "false", "text", "data", "count"}:
                raise InvalidRequest(f"Unknown _summary value '{raw}'", expression="_summary")
            query.summary = raw
        elif base == "_elements":
            query.elements = [e.strip() for e in raw.split(",") if e.strip()]
        elif base == "_total":
            if raw not in {"none", "estimate", "accurate"}:
                raise InvalidRequest(f"Unknown _total value '{raw}'", expression="_total")
            query.total = raw
        elif base == "_sort":
            query.sort = [self._sort_key(query.type, key.strip())
                          for key in raw.split(",") if key.strip()]
        elif base in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):
                raise _bad(name, f"unknown modifier ':{modifier}'")
            query.includes.append(self._include(query.type, name, raw, base == "_revinclude",
                                                bool(modifier)))
        elif base in ("_contained", "_containedType"):
            if raw not in ("false", "container"):
                self._ignore(query, name, "searching contained resources is not supported")
            return
        if base not in {"_format", "_pretty"}:
            query.used.append((name, raw))

    def _sort_key(self, rtype: str, key: str) -> SortKey:
        descending = key.startswith("-")
        code = key[1:] if descending else key
        if code in ("_id", "_lastUpdated"):
            return SortKey(code, None, descending)
        param = self.parameters.get(rtype, code)
        if param is None or param.type in ("composite", "special"):
            raise _bad("_sort", f"cannot sort {rtype} by '{code}'")
        return SortKey(code, param, descending)

    def _include(self, rtype: str, name: str, raw: str, reverse: bool, iterate: bool
                 ) -> Include:
        if raw == "*":
            return Include(None, None, None, iterate, reverse)
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
            raise _bad(name, f"'{raw}' is not SourceType:parameter[:TargetType]")
        source = parts[0]
        if parts[1] == "*":
            return Include(source, None, None, iterate, reverse)
        param = self.parameters.get(source, parts[1])
        if param is None or param.type != "reference":
            raise _bad(name, f"{source} has no reference parameter '{parts[1]}'")
        target = parts[2] if len(parts) == 3 else None
        if target is not None and not is_resource_type(target):
            raise _bad(name, f"unknown target type '{target}'")
        if not reverse and not iterate and source != rtype:
            raise _bad(name, f"the source type must be {rtype} (or use {name}:iterate)")
        return Include(source, param, target, iterate, reverse)

    # -- criteria ---------------------------------------------------------------------------

    def criterion(self, rtype: str, name: str, raw: str) -> Node:
        if name.startswith("_has:"):
            return self._has(rtype, name, raw)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        if dot:
            return self._chain(rtype, code, modifier or None, rest, name, raw)
        modifier = modifier or None
        if code == "_id":
            self._modifiers(name, modifier, frozenset({"missing"}))
            return Criterion(name, None, "_id", modifier, [unescape(v) for v in split_or(raw)])
        if code == "_lastUpdated":
            self._modifiers(name, modifier, frozenset())
            return Criterion(name, None, "_lastUpdated", None,
                             [parse_date(name, v) for v in split_or(raw)])
        if code == "_list":
            self._modifiers(name, modifier, frozenset())
            return Criterion(name, None, "_list", None, [unescape(v) for v in split_or(raw)])
        param = self.parameters.get(rtype, code)
        if param is None or param.type == "special":
            raise _Unknown(f"{rtype} has no search parameter '{code}'" if param is None
                           else f"'{code}' is a special parameter ekd does not support")
        return self._values(param, name, modifier, raw)

    def _modifiers(self, name: str, modifier: str | None, allowed: frozenset[str]) -> None:
        if modifier is not None and modifier not in allowed:
            raise _bad(name, f"modifier ':{modifier}' is not supported here")

    def _values(self, param: SearchParam, name: str, modifier: str | None, raw: str
                ) -> Criterion:
        kind = param.type
        if modifier is not None and modifier not in MODIFIERS.get(kind, frozenset()):
            if not (kind == "reference" and is_resource_type(modifier)):
                raise _bad(name, f"modifier ':{modifier}' is not supported on a {kind} "
                                 f"parameter")
            if param.target and modifier not in param.target:
                raise _bad(name, f"{modifier} is not a target of '{param.code}'")
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise _bad(name, ":missing takes true or false")
            return Criterion(name, param, kind, modifier, [], missing=raw == "true")
        alternatives = split_or(raw)
        crit = Criterion(name, param, kind, modifier, [])
        if kind == "composite":
            crit.second_type = self._second_type(param, name)
        for value in alternatives:
            crit.values.append(self._value(param, name, modifier, value, crit.second_type))
        return crit

    def _second_type(self, param: SearchParam, name: str) -> str:
        if len(param.components) < 2:
            raise _bad(name, "composite parameter without two components")
        second = self.parameters.by_url(param.components[1].definition)
        if second is None:
            raise _bad(name, "the composite's component parameters are unknown")
        return second.type

    def _value(self, param: SearchParam, name: str, modifier: str | None, raw: str,
               second_type: str | None) -> Value:
        kind = param.type
        if kind == "string":
            return unescape(raw) if modifier == "exact" else normalise(unescape(raw))
        if kind == "token":
            if modifier == "text":
                return normalise(unescape(raw))
            if modifier in ("in", "not-in"):
                return unescape(raw)
            if modifier == "of-type":
                parts = _SPLIT_PIPE.split(raw)
                if len(parts) != 3:
                    raise _bad(name, ":of-type takes system|code|value")
                return Token(unescape(parts[0]) or None,
                             f"{unescape(parts[1])}|{unescape(parts[2])}")
            return parse_token(raw)
        if kind == "date":
            return parse_date(name, raw)
        if kind == "number":
            return parse_number(name, raw)
        if kind == "quantity":
            return parse_quantity(name, raw)
        if kind == "reference":
            if modifier == "identifier":
                return parse_token(raw)
            return parse_reference(raw, modifier)
        if kind == "uri":
            return unescape(raw)
        if kind == "composite":
            parts = _SPLIT_DOLLAR.split(raw)
            if len(parts) != 2:
                raise _bad(name, f"'{raw}' is not first$second")
            second: Value
            if second_type == "token":
                second = parse_token(parts[1])
            elif second_type == "quantity":
                second = parse_quantity(name, parts[1])
            elif second_type == "number":
                second = parse_number(name, parts[1])
            elif second_type == "date":
                second = parse_date(name, parts[1])
            elif second_type == "string":
                second = normalise(unescape(parts[1]))
            elif second_type == "reference":
                second = parse_reference(parts[1], None)
            else:
                raise _bad(name, f"composite with a {second_type} component is not supported")
            return CompositeValue(parse_token(parts[0]), second)
        raise _bad(name, f"{kind} parameters are not supported")

    def _chain(self, rtype: str, code: str, type_modifier: str | None, rest: str, name: str,
               raw: str) -> Chain:
        param = self.parameters.get(rtype, code)
        if param is None:
            raise _Unknown(f"{rtype} has no search parameter '{code}'")
        if param.type != "reference":
            raise _bad(name, f"'{code}' is not a reference parameter, so it cannot be chained")
        if type_modifier is not None:
            if not is_resource_type(type_modifier):
                raise _bad(name, f"unknown resource type '{type_modifier}'")
            targets: tuple[str, ...] = (type_modifier,)
        else:
            targets = param.target or ()
        inner_name = rest.split(".", 1)[0].split(":", 1)[0]
        inner: dict[str, Node] = {}
        for target in targets:
            if inner_name in ("_id", "_lastUpdated", "_has") or \
                    self.parameters.get(target, inner_name) is not None:
                inner[target] = _as_sent(name, lambda t=target: self.criterion(t, rest, raw))
        if not inner:
            raise _bad(name, f"no target of '{code}' has a search parameter '{inner_name}'")
        return Chain(name, param, inner)

    def _has(self, rtype: str, name: str, raw: str) -> Has:
        parts = name.split(":", 3)
        if len(parts) < 4:
            raise _bad(name, "_has needs _has:Type:reference-parameter:parameter")
        _, source, ref_code, rest = parts
        if not is_resource_type(source):
            raise _bad(name, f"unknown resource type '{source}'")
        param = self.parameters.get(source, ref_code)
        if param is None or param.type != "reference":
            raise _bad(name, f"{source} has no reference parameter '{ref_code}'")
        if param.target and rtype not in param.target:
            raise _bad(name, f"{source}.{ref_code} does not refer to {rtype}")
        try:
            inner = _as_sent(name, lambda: self.criterion(source, rest, raw))
        except _Unknown as unknown:
            raise _bad(name, str(unknown)) from None
        return Has(source, param, inner)

    def _ignore(self, query: SearchQuery, name: str, why: str) -> None:
        message = f"Search parameter '{name}' ignored: {why}"
        if self.strict:
            raise InvalidRequest(message.replace(" ignored", " rejected"), expression=name)
        query.warnings.append(Issue("warning", "not-supported", message, (name,)))


class _Unknown(Exception):
    """A parameter the type does not have (a warning, or 400 under handling=strict)."""


def _as_sent(name: str, parse: Callable[[], Node]) -> Node:
    """Parse the inner part of a chain or `_has`; an error names the parameter as the client
    sent it (`subject:Patient.birthdate`), not only its inner part."""
    try:
        return parse()
    except InvalidRequest as exc:
        raise InvalidRequest(exc.diagnostics, expression=name) from None


def whole_number(name: str, raw: str, minimum: int) -> int:
    """A request parameter that must be a whole number of at least `minimum`."""
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number", expression=name) from None
    if value < minimum:
        raise InvalidRequest(f"{name} must be at least {minimum}", expression=name)
    return value
