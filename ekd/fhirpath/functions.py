"""The FHIRPath function library (FHIRPath 2.0 plus the FHIR-specific functions of R4).

Functions are registered as builders that receive the argument ASTs at compile time, so arity
and type-name arguments are checked once and criteria such as `where(...)` are compiled into
closures that are simply called per item.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import html
import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from functools import cmp_to_key, lru_cache
from typing import Any

from ekd.fhirpath import model
from ekd.fhirpath.engine import (
    FUNCTIONS,
    Compiler,
    Env,
    Ev,
    EvaluationError,
    Seen,
    Step,
    ast_type,
    compare_values,
    contains_item,
    distinct,
    log,
    resolve_type,
    scale,
    single,
    single_val,
    to_bool,
    type_info,
    type_matches,
    type_name,
    val,
)
from ekd.fhirpath.model import Node
from ekd.fhirpath.parser import Ast
from ekd.fhirpath.values import (
    CALENDAR_NORMAL,
    Date,
    DateTime,
    Quantity,
    Temporal,
    Time,
    comparable_units,
    convert_quantity,
)

_NUMBERS = (int, Decimal)


def _check_arity(name: str, args: list[Ast], arities: tuple[int, ...]) -> None:
    if len(args) not in arities:
        expected = " or ".join(str(a) for a in arities)
        raise EvaluationError(f"{name}() takes {expected} argument(s), got {len(args)}")


def func(name: str, *arities: int, env: bool = False) -> Callable[[Callable[..., list]], Any]:
    """Register a function whose arguments are evaluated once against the current focus."""
    allowed = arities or (0,)

    def deco(impl: Callable[..., list]) -> Callable[..., list]:
        def builder(c: Compiler, args: list[Ast]) -> Step:
            _check_arity(name, args, allowed)
            evs = [c.expr(a) for a in args]
            if env:
                return lambda inp, e: impl(inp, e, *[ev(e) for ev in evs])
            if not evs:
                return lambda inp, e: impl(inp)
            if len(evs) == 1:
                ev0 = evs[0]
                return lambda inp, e: impl(inp, ev0(e))
            return lambda inp, e: impl(inp, *[ev(e) for ev in evs])

        FUNCTIONS[name] = builder
        return impl

    return deco


def lazy(name: str, *arities: int) -> Callable[[Callable[..., list]], Any]:
    """Register a function whose arguments are evaluated per input item (criteria)."""

    def deco(impl: Callable[..., list]) -> Callable[..., list]:
        def builder(c: Compiler, args: list[Ast]) -> Step:
            _check_arity(name, args, arities)
            evs = [c.expr(a) for a in args]
            return lambda inp, e: impl(inp, e, *evs)

        FUNCTIONS[name] = builder
        return impl

    return deco


def _criterion(result: list) -> bool:
    """A criterion's outcome: a single Boolean as is, otherwise "is there something"."""
    if len(result) == 1:
        v = val(result[0])
        if v is True or v is False:
            return v
    return bool(result)


# -- existence ---------------------------------------------------------------------------------


@func("empty")
def _empty(inp: list) -> list:
    return [not inp]


@lazy("exists", 0, 1)
def _exists(inp: list, env: Env, crit: Ev | None = None) -> list:
    if crit is None:
        return [bool(inp)]
    return [any(_criterion(crit(env.item(x, i))) for i, x in enumerate(inp))]


@lazy("all", 1)
def _all(inp: list, env: Env, crit: Ev) -> list:
    return [all(_criterion(crit(env.item(x, i))) for i, x in enumerate(inp))]


def _booleans(inp: list, name: str) -> list[bool]:
    out = []
    for x in inp:
        v = val(x)
        if v is not True and v is not False:
            raise EvaluationError(f"{name}() expects booleans, got {type_name(x)}")
        out.append(v)
    return out


@func("allTrue")
def _all_true(inp: list) -> list:
    return [all(_booleans(inp, "allTrue"))]


@func("anyTrue")
def _any_true(inp: list) -> list:
    return [any(_booleans(inp, "anyTrue"))]


@func("allFalse")
def _all_false(inp: list) -> list:
    return [not any(_booleans(inp, "allFalse"))]


@func("anyFalse")
def _any_false(inp: list) -> list:
    return [not all(_booleans(inp, "anyFalse"))]


@func("subsetOf", 1)
def _subset_of(inp: list, other: list) -> list:
    return [all(contains_item(other, x) for x in inp)]


@func("supersetOf", 1)
def _superset_of(inp: list, other: list) -> list:
    return [all(contains_item(inp, x) for x in other)]


@func("count")
def _count(inp: list) -> list:
    return [len(inp)]


@func("distinct")
def _distinct(inp: list) -> list:
    return distinct(inp)


@func("isDistinct")
def _is_distinct(inp: list) -> list:
    return [len(distinct(inp)) == len(inp)]


@func("not")
def _not(inp: list) -> list:
    b = to_bool(inp, "not()")
    return [] if b is None else [not b]


# -- filtering and projection ------------------------------------------------------------------


@lazy("where", 1)
def _where(inp: list, env: Env, crit: Ev) -> list:
    return [x for i, x in enumerate(inp) if _criterion(crit(env.item(x, i)))]


@lazy("select", 1)
def _select(inp: list, env: Env, proj: Ev) -> list:
    out: list = []
    for i, x in enumerate(inp):
        out.extend(proj(env.item(x, i)))
    return out


class _Identity:
    """Seen-set for repeat(): nodes by identity (trees have no cycles), values by equality."""

    def __init__(self) -> None:
        self.ids: set[tuple[int, str]] = set()
        self.values = Seen()

    def add(self, x: Any) -> bool:
        if type(x) is Node:
            key = (id(x.data) if x.data is not None else id(x.ext), x.type)
            if key in self.ids:
                return False
            self.ids.add(key)
            return True
        return self.values.add(x)


# repeat() over computed values can grow forever (`1.repeat($this + 1)`); expressions come from
# profiles, so a server must stop them rather than hang.
REPEAT_LIMIT = 100_000


@lazy("repeat", 1)
def _repeat(inp: list, env: Env, proj: Ev) -> list:
    out: list = []
    seen = _Identity()
    queue = inp
    while queue:
        nxt: list = []
        for i, x in enumerate(queue):
            for y in proj(env.item(x, i)):
                if seen.add(y):
                    out.append(y)
                    nxt.append(y)
        if len(out) > REPEAT_LIMIT:
            raise EvaluationError(f"repeat() produced more than {REPEAT_LIMIT} items")
        queue = nxt
    return out


def _type_builder(name: str, exact: bool, as_: bool) -> Callable[[Compiler, list[Ast]], Step]:
    def builder(c: Compiler, args: list[Ast]) -> Step:
        _check_arity(name, args, (1,))
        ns, tname = resolve_type(ast_type(args[0]))
        if name == "is":

            def is_(inp: list, env: Env) -> list:
                item = single(inp, "is()")
                return [] if item is None else [type_matches(item, ns, tname, False)]

            return is_

        def filter_(inp: list, env: Env) -> list:
            if as_ and len(inp) > 1 and env.opts.as_singleton:
                raise EvaluationError(f"as() expects a single item, got {len(inp)}")
            return [x for x in inp if type_matches(x, ns, tname, exact)]

        return filter_

    return builder


FUNCTIONS["ofType"] = _type_builder("ofType", True, False)
FUNCTIONS["as"] = _type_builder("as", True, True)
FUNCTIONS["is"] = _type_builder("is", False, False)


@func("type")
def _type(inp: list) -> list:
    return [type_info(x) for x in inp]


# -- subsetting and combining ------------------------------------------------------------------


@func("single")
def _single(inp: list) -> list:
    item = single(inp, "single()")
    return [] if item is None else [item]


@func("first")
def _first(inp: list) -> list:
    return inp[:1]


@func("last")
def _last(inp: list) -> list:
    return inp[-1:]


@func("tail")
def _tail(inp: list) -> list:
    return inp[1:]


def _int_param(coll: list, name: str) -> int | None:
    v = single_val(coll, name)
    if v is None:
        return None
    if type(v) is not int:
        raise EvaluationError(f"{name} expects an integer, got {type_name(v)}")
    return v  # type: ignore[no-any-return]


@func("skip", 1)
def _skip(inp: list, n: list) -> list:
    k = _int_param(n, "skip()")
    if k is None:
        return []
    return inp[max(k, 0):]


@func("take", 1)
def _take(inp: list, n: list) -> list:
    k = _int_param(n, "take()")
    if k is None or k <= 0:
        return []
    return inp[:k]


@func("intersect", 1)
def _intersect(inp: list, other: list) -> list:
    return distinct([x for x in inp if contains_item(other, x)])


@func("exclude", 1)
def _exclude(inp: list, other: list) -> list:
    return [x for x in inp if not contains_item(other, x)]


@func("union", 1)
def _union(inp: list, other: list) -> list:
    return distinct(inp + other)


@func("combine", 1)
def _combine(inp: list, other: list) -> list:
    return inp + other


# -- conversion --------------------------------------------------------------------------------


@lazy("iif", 2, 3)
def _iif(inp: list, env: Env, crit: Ev, yes: Ev, no: Ev | None = None) -> list:
    if len(inp) > 1:
        raise EvaluationError(f"iif() expects at most one input item, got {len(inp)}")
    inner = Env(inp, env.vars, env.opts, env.index, env.total) if inp else env
    if to_bool(crit(inner), "iif() criterion", env.opts.strict):
        return yes(inner)
    return no(inner) if no is not None else []


_TRUE_STRINGS = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE_STRINGS = {"false", "f", "no", "n", "0", "0.0"}
_INT_RE = re.compile(r"[+-]?\d+")
_DEC_RE = re.compile(r"[+-]?\d+(?:\.\d+)?")
_QUANTITY_RE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*(?:'([^']+)'|([a-zA-Z]+))?")


def _conv_boolean(v: Any) -> bool | None:
    if v is True or v is False:
        return v  # type: ignore[no-any-return]
    if type(v) in _NUMBERS:
        return True if v == 1 else False if v == 0 else None
    if type(v) is str:
        low = v.lower()
        return True if low in _TRUE_STRINGS else False if low in _FALSE_STRINGS else None
    return None


def _conv_integer(v: Any) -> int | None:
    if v is True or v is False:
        return int(v)
    if type(v) is int:
        return v  # type: ignore[no-any-return]
    if type(v) is str and _INT_RE.fullmatch(v):
        return int(v)
    return None


def _conv_decimal(v: Any) -> Decimal | None:
    if v is True or v is False:
        return Decimal("1.0") if v else Decimal("0.0")
    if type(v) in _NUMBERS:
        return Decimal(v)
    if type(v) is str and _DEC_RE.fullmatch(v):
        return Decimal(v)
    return None


def to_string(v: Any) -> str | None:
    t = type(v)
    if t is bool:
        return "true" if v else "false"
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if t is Decimal:
        return format(v, "f")
    if t in (Date, DateTime, Time, Quantity):
        return str(v)
    return None


def _conv_quantity(v: Any) -> Quantity | None:
    if v is True or v is False:
        return Quantity(Decimal("1.0") if v else Decimal("0.0"), "1")
    if type(v) in _NUMBERS:
        return Quantity(Decimal(v), "1")
    if type(v) is Quantity:
        return v  # type: ignore[no-any-return]
    if type(v) is str:
        m = _QUANTITY_RE.fullmatch(v.strip())
        if not m:
            return None
        number, quoted, word = m.groups()
        if word is not None:
            if word not in CALENDAR_NORMAL:
                return None
            return Quantity(Decimal(number), word, True)
        return Quantity(Decimal(number), quoted or "1")
    return None


def _conv_date(v: Any) -> Date | None:
    if type(v) is Date:
        return v  # type: ignore[no-any-return]
    if type(v) is DateTime:
        return v.to_date()  # type: ignore[no-any-return]
    if type(v) is str:
        d = Date.parse(v)
        if d is None:
            dt = DateTime.parse(v)
            return dt.to_date() if dt is not None else None
        return d
    return None


def _conv_datetime(v: Any) -> DateTime | None:
    if type(v) is DateTime:
        return v  # type: ignore[no-any-return]
    if type(v) is Date:
        return v.to_datetime()  # type: ignore[no-any-return]
    if type(v) is str:
        return DateTime.parse(v)
    return None


def _conv_time(v: Any) -> Time | None:
    if type(v) is Time:
        return v  # type: ignore[no-any-return]
    if type(v) is str:
        return Time.parse(v[1:] if v.startswith("T") else v)
    return None


_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "Boolean": _conv_boolean, "Integer": _conv_integer, "Decimal": _conv_decimal,
    "String": to_string, "Date": _conv_date, "DateTime": _conv_datetime, "Time": _conv_time,
}


def _register_conversion(kind: str, conv: Callable[[Any], Any]) -> None:
    @func("to" + kind)
    def to_(inp: list) -> list:
        v = single_val(inp, f"to{kind}()")
        if v is None:
            return []
        r = conv(v)
        return [] if r is None else [r]

    @func("convertsTo" + kind)
    def converts(inp: list) -> list:
        v = single_val(inp, f"convertsTo{kind}()")
        if v is None:
            return []
        return [conv(v) is not None]


for _kind, _conv in _CONVERSIONS.items():
    _register_conversion(_kind, _conv)


def _quantity_with_unit(inp: list, unit: list | None, name: str) -> Quantity | None:
    v = single_val(inp, name)
    if v is None:
        return None
    q = _conv_quantity(v)
    if q is None or not unit:
        return q
    target = _str_param(unit, name)
    if target is None:
        return q
    calendar_unit = target in CALENDAR_NORMAL
    return convert_quantity(q, target, calendar_unit)


@func("toQuantity", 0, 1)
def _to_quantity(inp: list, unit: list | None = None) -> list:
    q = _quantity_with_unit(inp, unit, "toQuantity()")
    return [] if q is None else [q]


@func("convertsToQuantity", 0, 1)
def _converts_to_quantity(inp: list, unit: list | None = None) -> list:
    if not inp:
        return []
    return [_quantity_with_unit(inp, unit, "convertsToQuantity()") is not None]


# -- strings -----------------------------------------------------------------------------------


def _str_input(inp: list, name: str) -> str | None:
    v = single_val(inp, name)
    if v is None:
        return None
    if type(v) is not str:
        raise EvaluationError(f"{name} applies to strings, not {type_name(inp[0])}")
    return v  # type: ignore[no-any-return]


def _str_param(coll: list, name: str) -> str | None:
    v = single_val(coll, name)
    if v is None:
        return None
    if type(v) is not str:
        raise EvaluationError(f"{name} expects a string argument, got {type_name(v)}")
    return v  # type: ignore[no-any-return]


def _string_fn(name: str, nargs: int = 0) -> Callable[[Callable[..., Any]], Any]:
    """A function of a string and string arguments; empty input or argument gives empty."""

    def deco(impl: Callable[..., Any]) -> Callable[..., Any]:
        label = f"{name}()"

        def wrapper(inp: list, *args: list) -> list:
            s = _str_input(inp, label)
            if s is None:
                return []
            params = [_str_param(a, label) for a in args]
            if any(p is None for p in params):
                return []
            r = impl(s, *params)
            if r is None:
                return []
            return r if isinstance(r, list) else [r]

        func(name, nargs)(wrapper)
        return impl

    return deco


@_string_fn("indexOf", 1)
def _index_of(s: str, sub: str) -> int:
    return s.find(sub)


@_string_fn("lastIndexOf", 1)
def _last_index_of(s: str, sub: str) -> int:
    return s.rfind(sub)


@func("substring", 1, 2)
def _substring(inp: list, start: list, length: list | None = None) -> list:
    s = _str_input(inp, "substring()")
    if s is None:
        return []
    i = _int_param(start, "substring()")
    if i is None or i < 0 or i >= len(s):
        return []
    if length is None:
        return [s[i:]]
    n = _int_param(length, "substring()")
    if n is None:
        return [s[i:]]
    return [s[i : i + max(n, 0)]]


@_string_fn("startsWith", 1)
def _starts_with(s: str, prefix: str) -> bool:
    return s.startswith(prefix)


@_string_fn("endsWith", 1)
def _ends_with(s: str, suffix: str) -> bool:
    return s.endswith(suffix)


@_string_fn("contains", 1)
def _contains(s: str, sub: str) -> bool:
    return sub in s


@_string_fn("upper")
def _upper(s: str) -> str:
    return s.upper()


@_string_fn("lower")
def _lower(s: str) -> str:
    return s.lower()


@_string_fn("replace", 2)
def _replace(s: str, pattern: str, substitution: str) -> str:
    return s.replace(pattern, substitution)


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise EvaluationError(f"Invalid regular expression {pattern!r}: {exc}") from None


@_string_fn("matches", 1)
def _matches(s: str, pattern: str) -> bool:
    return _regex(pattern).search(s) is not None


@_string_fn("matchesFull", 1)
def _matches_full(s: str, pattern: str) -> bool:
    return _regex(pattern).fullmatch(s) is not None


def _substitution(text: str) -> Callable[[re.Match[str]], str]:
    """A replacement in the Java/.NET style FHIRPath uses: $1 for groups, \\$ for a dollar."""
    parts: list[str | int] = []
    i = 0
    buf = ""
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf += text[i + 1]
            i += 2
        elif ch == "$" and i + 1 < len(text) and text[i + 1].isdigit():
            j = i + 1
            while j < len(text) and text[j].isdigit():
                j += 1
            parts.extend([buf, int(text[i + 1 : j])])
            buf = ""
            i = j
        else:
            buf += ch
            i += 1
    parts.append(buf)
    return lambda m: "".join(p if isinstance(p, str) else (m.group(p) or "") for p in parts)


@_string_fn("replaceMatches", 2)
def _replace_matches(s: str, pattern: str, substitution: str) -> str:
    if pattern == "":
        return s  # an empty pattern matches nothing worth replacing
    return _regex(pattern).sub(_substitution(substitution), s)


@_string_fn("length")
def _length(s: str) -> int:
    return len(s)


@_string_fn("toChars")
def _to_chars(s: str) -> list:
    return list(s)


@_string_fn("trim")
def _trim(s: str) -> str:
    return s.strip()


@_string_fn("split", 1)
def _split(s: str, sep: str) -> list:
    return list(s) if sep == "" else s.split(sep)


@func("join", 0, 1)
def _join(inp: list, sep: list | None = None) -> list:
    separator = "" if sep is None else (_str_param(sep, "join()") or "")
    parts = []
    for x in inp:
        v = val(x)
        if type(v) is not str:
            raise EvaluationError(f"join() expects strings, got {type_name(x)}")
        parts.append(v)
    return [separator.join(parts)]


@_string_fn("encode", 1)
def _encode(s: str, fmt: str) -> str:
    raw = s.encode()
    if fmt == "base64":
        return base64.b64encode(raw).decode()
    if fmt == "urlbase64":
        return base64.urlsafe_b64encode(raw).decode()
    if fmt == "hex":
        return raw.hex()
    raise EvaluationError(f"Unknown encoding {fmt!r}")


@_string_fn("decode", 1)
def _decode(s: str, fmt: str) -> str:
    try:
        if fmt == "base64":
            return base64.b64decode(s, validate=True).decode()
        if fmt == "urlbase64":
            return base64.urlsafe_b64decode(s).decode()
        if fmt == "hex":
            return bytes.fromhex(s).decode()
    except (binascii.Error, ValueError) as exc:
        raise EvaluationError(f"Cannot decode {s!r} as {fmt}: {exc}") from None
    raise EvaluationError(f"Unknown encoding {fmt!r}")


@_string_fn("escape", 1)
def _escape(s: str, target: str) -> str:
    if target == "html":
        return html.escape(s, quote=False).replace('"', "&quot;")
    if target == "json":
        return json.dumps(s, ensure_ascii=False)[1:-1]
    raise EvaluationError(f"Unknown escape target {target!r}")


_JSON_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                 "t": "\t"}


def _json_unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    return chr(int(code[1:], 16)) if code[0] == "u" else _JSON_ESCAPES[code]


@_string_fn("unescape", 1)
def _unescape(s: str, target: str) -> str:
    if target == "html":
        return html.unescape(s)
    if target == "json":
        return _JSON_ESCAPE.sub(_json_unescape, s)
    raise EvaluationError(f"Unknown escape target {target!r}")


# -- math --------------------------------------------------------------------------------------


def _number_input(inp: list, name: str, quantity: bool = False) -> Any:
    v = single_val(inp, name)
    if v is None:
        return None
    if (type(v) in _NUMBERS) or (quantity and type(v) is Quantity):
        return v
    raise EvaluationError(f"{name} applies to numbers, not {type_name(inp[0])}")


def _math_fn(name: str, *arities: int, quantity: bool = False) -> Callable[..., Any]:
    """A function of a number and number arguments; empty in, empty out; no result for
    arguments outside the function's domain (sqrt(-1), ln(0))."""

    def deco(impl: Callable[..., Any]) -> Callable[..., Any]:
        label = f"{name}()"

        def wrapper(inp: list, *args: list) -> list:
            v = _number_input(inp, label, quantity)
            if v is None:
                return []
            params = []
            for a in args:
                p = single_val(a, label)
                if p is None:
                    return []
                if type(p) not in _NUMBERS:
                    raise EvaluationError(f"{label} expects a number argument")
                params.append(p)
            try:
                r = impl(v, *params)
            except EvaluationError:
                raise
            except (ArithmeticError, ValueError):
                return []
            return [] if r is None else [r]

        func(name, *(arities or (0,)))(wrapper)
        return impl

    return deco


def _float_result(x: float) -> Decimal | None:
    if math.isnan(x) or math.isinf(x):
        return None
    return Decimal(repr(x))


@_math_fn("abs", quantity=True)
def _abs(v: Any) -> Any:
    if type(v) is Quantity:
        return Quantity(abs(v.value), v.unit, v.calendar)
    return abs(v)


@_math_fn("ceiling")
def _ceiling(v: int | Decimal) -> int:
    return math.ceil(v)


@_math_fn("floor")
def _floor(v: int | Decimal) -> int:
    return math.floor(v)


@_math_fn("truncate")
def _truncate(v: int | Decimal) -> int:
    return int(v)


@_math_fn("round", 0, 1)
def _round(v: int | Decimal, precision: int | Decimal = 0) -> Decimal:
    if type(precision) is not int or precision < 0:
        raise EvaluationError("round() expects a non-negative integer precision")
    return Decimal(v).quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP)


@_math_fn("exp")
def _exp(v: int | Decimal) -> Decimal | None:
    return _float_result(math.exp(v))


@_math_fn("ln")
def _ln(v: int | Decimal) -> Decimal | None:
    return _float_result(math.log(v)) if v > 0 else None


@_math_fn("log", 1)
def _log(v: int | Decimal, base: int | Decimal) -> Decimal | None:
    if v <= 0 or base <= 0 or base == 1:
        return None
    return _float_result(math.log(v) / math.log(base))


@_math_fn("power", 1)
def _power(v: int | Decimal, exponent: int | Decimal) -> int | Decimal | None:
    if type(v) is int and type(exponent) is int and exponent >= 0:
        return v**exponent
    if type(exponent) is int:
        return Decimal(v) ** exponent
    if v < 0:
        return None
    return _float_result(float(v) ** float(exponent))


@_math_fn("sqrt")
def _sqrt(v: int | Decimal) -> Decimal | None:
    return _float_result(math.sqrt(v)) if v >= 0 else None


# -- tree navigation ---------------------------------------------------------------------------


@func("children")
def _children(inp: list) -> list:
    out: list = []
    for x in inp:
        if type(x) is Node:
            model.children(x, out)
    return out


@func("descendants")
def _descendants(inp: list) -> list:
    out: list = []
    level = inp
    while level:
        nxt: list = []
        for x in level:
            if type(x) is Node:
                model.children(x, nxt)
        out.extend(nxt)
        level = nxt
    return out


# -- utility -----------------------------------------------------------------------------------


@lazy("trace", 1, 2)
def _trace(inp: list, env: Env, name: Ev, proj: Ev | None = None) -> list:
    if log.isEnabledFor(10):
        label = single_val(name(env), "trace()")
        shown = inp
        if proj is not None:
            shown = []
            for i, x in enumerate(inp):
                shown.extend(proj(env.item(x, i)))
        log.debug("trace %s: %r", label, shown)
    return inp


def _now() -> datetime:
    return datetime.now().astimezone()


@func("now")
def _now_fn(inp: list) -> list:
    n = _now()
    offset = n.utcoffset()
    tz = int(offset.total_seconds() // 60) if offset is not None else None
    return [DateTime(n.year, n.month, n.day, n.hour, n.minute, n.second,
                     f"{n.microsecond // 1000:03d}", tz)]


@func("today")
def _today(inp: list) -> list:
    n = _now()
    return [Date(n.year, n.month, n.day)]


@func("timeOfDay")
def _time_of_day(inp: list) -> list:
    n = _now()
    return [Time(n.hour, n.minute, n.second, f"{n.microsecond // 1000:03d}")]


# -- aggregates --------------------------------------------------------------------------------


def _aggregate_builder(c: Compiler, args: list[Ast]) -> Step:
    _check_arity("aggregate", args, (1, 2))
    agg = c.expr(args[0])
    init = c.expr(args[1]) if len(args) == 2 else None

    def aggregate(inp: list, env: Env) -> list:
        total = init(env) if init is not None else []
        for i, x in enumerate(inp):
            total = agg(Env([x], env.vars, env.opts, i, total))
        return total

    return aggregate


FUNCTIONS["aggregate"] = _aggregate_builder


def _numbers(inp: list, name: str) -> list:
    out = []
    for x in inp:
        v = val(x)
        if type(v) not in _NUMBERS and type(v) is not Quantity:
            raise EvaluationError(f"{name}() expects numbers, got {type_name(x)}")
        out.append(v)
    return out


@func("sum")
def _sum(inp: list) -> list:
    values = _numbers(inp, "sum")
    if not values:
        return [0]
    total = values[0]
    for v in values[1:]:
        if type(total) is Quantity or type(v) is Quantity:
            raise EvaluationError("sum() of quantities is not supported")
        total = total + v
    return [total]


def _extreme(inp: list, name: str, sign: int) -> list:
    best = None
    for x in inp:
        v = val(x)
        if best is None:
            best = v
            continue
        c = compare_values(v, best, name)
        if c is not None and c * sign > 0:
            best = v
    return [] if best is None else [best]


@func("min")
def _min(inp: list) -> list:
    return _extreme(inp, "min()", -1)


@func("max")
def _max(inp: list) -> list:
    return _extreme(inp, "max()", 1)


@func("avg")
def _avg(inp: list) -> list:
    values = _numbers(inp, "avg")
    if not values:
        return []
    return [Decimal(sum(values)) / len(values)]


# -- sorting -----------------------------------------------------------------------------------


def _sort_builder(c: Compiler, args: list[Ast]) -> Step:
    keys: list[tuple[Ev, bool]] = []
    for a in args:
        if a.kind == "unary" and a.value == "-":
            keys.append((c.expr(a.children[0]), True))
        else:
            keys.append((c.expr(a), False))

    def compare(x: list, y: list) -> int:
        for (a, b), (_ev, desc) in zip(zip(x, y, strict=True), keys or [(None, False)],
                                       strict=False):
            if a is None or b is None:  # an empty key sorts after any value
                r = (a is None) - (b is None)
            else:
                r = compare_values(a, b, "sort()") or 0
            if r:
                return -r if desc else r
        return 0

    def sort(inp: list, env: Env) -> list:
        if keys:
            rows = [[single_val(ev(env.item(x, i)), "sort()") for ev, _d in keys]
                    for i, x in enumerate(inp)]
        else:
            rows = [[val(x)] for x in inp]
        order = sorted(range(len(inp)), key=cmp_to_key(lambda i, j: compare(rows[i], rows[j])))
        return [inp[i] for i in order]

    return sort


FUNCTIONS["sort"] = _sort_builder


# -- boundaries and precision ------------------------------------------------------------------


def _decimal_boundary(d: Decimal, p: int, high: bool) -> Decimal:
    """The lowest/highest value `d` may stand for, given to `p` decimal places.

    Follows the reference implementation the conformance suite encodes: the boundary is the
    value plus/minus half a unit in its last place, cut to `p` places (rounded half-up for the
    high boundary, truncated for the low one); negative values mirror positive ones.
    """
    if d.is_signed() and d != 0:  # copy_negate keeps the sign of a zero result: -0.0
        return _decimal_boundary(d.copy_negate(), p, not high).copy_negate()
    half = Decimal(5).scaleb(-(scale(d) + 1))
    v = d + half if high else d - half
    with localcontext(Context(prec=80)):
        return v.quantize(Decimal(1).scaleb(-p), rounding=ROUND_HALF_UP if high else ROUND_DOWN)


def _temporal_boundary(v: Temporal, digits: int | None, high: bool) -> Temporal | None:
    if isinstance(v, Time):
        p = 9 if digits is None else digits
        if p not in (2, 4, 6, 9):
            return None
        h, mi, s = v.parts
        if mi is None:
            mi = 0 if p > 2 else None
        n = {2: 1, 4: 2, 6: 3, 9: 3}[p]
        parts = [h, mi, s]
        fill = [23, 59, 59] if high else [0, 0, 0]
        parts = [parts[i] if parts[i] is not None else fill[i] for i in range(n)] + [None] * (3 - n)
        frac = None
        if p == 9:
            frac = v.frac.ljust(3, "0")[:3] if v.frac and s is not None else (
                "999" if high else "000")
        return Time(*parts, frac)  # type: ignore[arg-type]
    is_date = isinstance(v, Date)
    dt = v.to_datetime() if isinstance(v, Date) else v
    assert isinstance(dt, DateTime)
    p = (8 if is_date else 17) if digits is None else digits
    if p not in (4, 6, 8, 10, 12, 14, 17):
        return None
    y, mo, d, h, mi, s = dt.parts
    if h is not None and mi is None:
        mi = 0  # an hour alone is not a valid FHIR time: read T08 as 08:00
    n = {4: 1, 6: 2, 8: 3, 10: 4, 12: 5, 14: 6, 17: 6}[p]
    assert y is not None
    mo = mo if mo is not None else (12 if high else 1)
    if d is None:
        d = calendar.monthrange(y, mo)[1] if high else 1
    known = [y, mo, d, h if h is not None else (23 if high else 0),
             mi if mi is not None else (59 if high else 0),
             s if s is not None else (59 if high else 0)]
    parts = known[:n] + [None] * (6 - n)
    if is_date and p <= 8:
        return Date(*parts[:3])  # type: ignore[arg-type]
    frac = None
    if p == 17:
        frac = dt.frac.ljust(3, "0")[:3] if dt.frac and s is not None else (
            "999" if high else "000")
    tz = None
    if n >= 4:
        tz = dt.tz if dt.tz is not None else (-12 * 60 if high else 14 * 60)
    return DateTime(*parts, frac=frac, tz=tz)  # type: ignore[misc]


def _boundary(high: bool) -> Callable[..., list]:
    name = "highBoundary()" if high else "lowBoundary()"

    def boundary(inp: list, precision: list | None = None) -> list:
        v = single_val(inp, name)
        if v is None:
            return []
        p = _int_param(precision, name) if precision is not None else None
        if type(v) in _NUMBERS or type(v) is Quantity:
            number = v.value if type(v) is Quantity else Decimal(v)
            digits = 8 if p is None else p
            if digits < 0 or digits > 28:
                return []
            try:
                b = _decimal_boundary(number, digits, high)
            except InvalidOperation:
                return []
            return [Quantity(b, v.unit, v.calendar) if type(v) is Quantity else b]
        if isinstance(v, Temporal):
            r = _temporal_boundary(v, p, high)
            return [] if r is None else [r]
        raise EvaluationError(f"{name} applies to numbers, quantities, dates and times")

    return boundary


func("lowBoundary", 0, 1)(_boundary(False))
func("highBoundary", 0, 1)(_boundary(True))


@func("precision")
def _precision(inp: list) -> list:
    v = single_val(inp, "precision()")
    if v is None:
        return []
    if type(v) in _NUMBERS:
        return [scale(v)]
    if isinstance(v, Temporal):
        return [v.digits()]  # type: ignore[attr-defined]
    raise EvaluationError("precision() applies to numbers, dates and times")


@func("comparable", 1)
def _comparable(inp: list, other: list) -> list:
    a = single_val(inp, "comparable()")
    b = single_val(other, "comparable()")
    if a is None or b is None:
        return []
    if type(a) is not Quantity or type(b) is not Quantity:
        raise EvaluationError("comparable() applies to quantities")
    return [comparable_units(a, b)]


# -- FHIR-specific functions -------------------------------------------------------------------


@func("extension", 1)
def _extension(inp: list, url: list) -> list:
    u = _str_param(url, "extension()")
    if u is None:
        return []
    out: list = []
    found: list = []
    for x in inp:
        if type(x) is Node:
            found.clear()
            model.member(x, "extension", found)
            out.extend(e for e in found if isinstance(e.data, dict) and e.data.get("url") == u)
    return out


@func("hasValue")
def _has_value(inp: list) -> list:
    if len(inp) != 1:
        return [False]
    x = inp[0]
    if type(x) is Node:
        return [x.type in model.PRIMITIVES and x.data is not None]
    return [True]


@func("getValue")
def _get_value(inp: list) -> list:
    out = []
    for x in inp:
        if type(x) is Node:
            if x.type in model.PRIMITIVES and x.data is not None:
                out.append(x.value)
        else:
            out.append(x)
    return out


def _resource_items(env: Env) -> list[Node]:
    for name in ("rootResource", "resource"):
        for x in env.vars.get(name, ()):
            if type(x) is Node:
                return [x]
    return [x for x in env.focus if type(x) is Node]


@func("resolve", env=True)
def _resolve(inp: list, env: Env) -> list:
    out: list = []
    roots = _resource_items(env)
    for x in inp:
        v = val(x)
        if type(x) is Node and isinstance(x.data, dict):
            ref = x.data.get("reference")
        elif type(v) is str:
            ref = v
        else:
            continue
        if not isinstance(ref, str):
            continue
        for root in roots:
            found = _resolve_in(root, ref)
            if found is not None:
                out.append(model.resource_node(found))
                break
    return out


def _resolve_in(root: Node, ref: str) -> dict | None:
    data = root.data
    if not isinstance(data, dict):
        return None
    if ref.startswith("#"):
        for c in data.get("contained", ()):
            if isinstance(c, dict) and c.get("id") == ref[1:]:
                return c
        return None
    if data.get("resourceType") == "Bundle":
        for entry in data.get("entry", ()):
            res = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(res, dict):
                continue
            if entry.get("fullUrl") == ref:
                return res
            local = f"{res.get('resourceType')}/{res.get('id')}"
            if ref == local or ref.endswith("/" + local) or ref.startswith(local + "/_history/"):
                return res
    return None


_CORE_PROFILE = "http://hl7.org/fhir/StructureDefinition/"


@func("conformsTo", 1)
def _conforms_to(inp: list, url: list) -> list:
    u = _str_param(url, "conformsTo()")
    if u is None:
        return []
    item = single(inp, "conformsTo()")
    if item is None:
        return []
    if u.startswith(_CORE_PROFILE) and u[len(_CORE_PROFILE):] in model.FHIR_TYPES:
        return [type(item) is Node and model.is_subtype(item.type, u[len(_CORE_PROFILE):])]
    raise EvaluationError(f"conformsTo(): cannot check profile {u!r} (only core types are known)")


@func("memberOf", 1)
def _member_of(inp: list, valueset: list) -> list:
    raise EvaluationError("memberOf() needs a terminology service, which is not available here")


_HTML_ELEMENTS = frozenset({
    "a", "abbr", "acronym", "b", "big", "blockquote", "br", "caption", "cite", "code", "col",
    "colgroup", "dd", "dfn", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "i", "img", "li", "ol", "p", "pre", "q", "samp", "small", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var",
})
_HTML_ATTRIBUTES = frozenset({
    "abbr", "accesskey", "align", "alt", "axis", "bgcolor", "border", "cellhalign",
    "cellpadding", "cellspacing", "cellvalign", "char", "charoff", "charset", "cite", "class",
    "colspan", "compact", "coords", "dir", "frame", "headers", "height", "href", "hreflang",
    "hspace", "id", "lang", "longdesc", "name", "nowrap", "rel", "rev", "rowspan", "rules",
    "scope", "shape", "span", "src", "start", "style", "summary", "tabindex", "title", "type",
    "valign", "value", "vspace", "width",
})


@func("htmlChecks")
def _html_checks(inp: list) -> list:
    """txt-1/txt-2: only the basic HTML subset of the narrative rules, and some content."""
    from lxml import etree

    v = single_val(inp, "htmlChecks()")
    if v is None:
        return []
    if type(v) is not str:
        return [False]
    try:
        root = etree.fromstring(v.encode())
    except etree.XMLSyntaxError:
        return [False]
    xhtml = "{http://www.w3.org/1999/xhtml}"
    if root.tag != xhtml + "div":
        return [False]
    has_content = False
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if not el.tag.startswith(xhtml) or el.tag[len(xhtml):] not in _HTML_ELEMENTS:
            return [False]
        for attr in el.attrib:
            local = attr.rsplit("}", 1)[-1]
            if local not in _HTML_ATTRIBUTES and not attr.startswith("{http://www.w3.org/XML"):
                return [False]
        if el.tag == xhtml + "img" or (el.text and el.text.strip()) or (
            el.tail and el.tail.strip() and el is not root
        ):
            has_content = True
    return [has_content]
