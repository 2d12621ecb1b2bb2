"""Binary operators: equality, comparison, boolean logic, membership, union, arithmetic."""

from __future__ import annotations

from decimal import Decimal, DivisionByZero, InvalidOperation

from ekd.fhirpath import engine
from ekd.fhirpath.engine import (
    Env,
    Ev,
    EvaluationError,
    Seen,
    compare_values,
    const_items,
    contains_item,
    eq_items,
    eq_values,
    equiv_values,
    single_val,
    to_bool,
    type_name,
    val,
)
from ekd.fhirpath.values import (
    Date,
    DateTime,
    Quantity,
    Temporal,
    Time,
    add_duration,
    convert_quantity,
    duration_unit,
    multiply_units,
)

_NUMBERS = (int, Decimal)


def binary(op: str, left: Ev, right: Ev) -> Ev:
    return _BUILDERS[op](op, left, right)


# -- equality ----------------------------------------------------------------------------------


def _equality(op: str, left: Ev, right: Ev) -> Ev:
    negate = op == "!="
    if engine.FOLD_CONSTANTS:
        text, other = _const_string(right), left
        if text is None:
            text, other = _const_string(left), right
        if text is not None:
            return _string_equality(negate, other, text)

    def equals(env: Env) -> list:
        a, b = left(env), right(env)
        if not a or not b:
            return []
        if len(a) != len(b):
            return [negate]
        for x, y in zip(a, b, strict=True):
            r = eq_items(x, y)
            if r is None:
                return []
            if not r:
                return [negate]
        return [not negate]

    return equals


def _const_string(ev: Ev) -> str | None:
    items = const_items(ev)
    if items is not None and len(items) == 1 and type(items[0]) is str:
        return items[0]  # type: ignore[no-any-return]
    return None


def _string_equality(negate: bool, other: Ev, text: str) -> Ev:
    """`x = 'text'` (either way round): what `equals` computes, without evaluating the constant
    side per call or going through the general comparison for a String x. Equality is
    symmetric (`eq_values`), so the side the literal is on does not matter."""

    def equals_text(env: Env) -> list:
        a = other(env)
        if not a:
            return []
        if len(a) != 1:
            return [negate]
        v = val(a[0])
        if type(v) is str:
            return [(v == text) is not negate]
        r = eq_values(v, text)
        if r is None:
            return []
        return [r is not negate]

    return equals_text


def _equivalence(op: str, left: Ev, right: Ev) -> Ev:
    negate = op == "!~"

    def equivalent(env: Env) -> list:
        a, b = left(env), right(env)
        if len(a) != len(b):
            return [negate]
        remaining = [val(y) for y in b]
        for x in a:
            v = val(x)
            for i, y in enumerate(remaining):
                if equiv_values(v, y):
                    del remaining[i]
                    break
            else:
                return [negate]
        return [not negate]

    return equivalent


def _comparison(op: str, left: Ev, right: Ev) -> Ev:
    def compare(env: Env) -> list:
        a = single_val(left(env), f"'{op}'")
        b = single_val(right(env), f"'{op}'")
        if a is None or b is None:
            return []
        c = compare_values(a, b, op)
        if c is None:
            return []
        if op == "<":
            return [c < 0]
        if op == ">":
            return [c > 0]
        if op == "<=":
            return [c <= 0]
        return [c >= 0]

    return compare


# -- boolean logic -----------------------------------------------------------------------------


def _logic(op: str, left: Ev, right: Ev) -> Ev:
    if op == "and":

        def and_(env: Env) -> list:
            a = to_bool(left(env), "and")
            if a is False:
                return [False]
            b = to_bool(right(env), "and")
            if b is False:
                return [False]
            if a is None or b is None:
                return []
            return [True]

        return and_
    if op == "or":

        def or_(env: Env) -> list:
            a = to_bool(left(env), "or")
            if a is True:
                return [True]
            b = to_bool(right(env), "or")
            if b is True:
                return [True]
            if a is None or b is None:
                return []
            return [False]

        return or_
    if op == "xor":

        def xor(env: Env) -> list:
            a = to_bool(left(env), "xor")
            b = to_bool(right(env), "xor")
            if a is None or b is None:
                return []
            return [a != b]

        return xor

    def implies(env: Env) -> list:
        a = to_bool(left(env), "implies")
        if a is False:
            return [True]
        b = to_bool(right(env), "implies")
        if b is True:
            return [True]
        if a is None:
            return []
        return [False] if b is False else []

    return implies


# -- collections -------------------------------------------------------------------------------


def _string_set(ev: Ev) -> frozenset | None:
    """The items of a constant collection made only of strings and booleans as a set, for
    `in`/`contains` (None otherwise, and when constant folding is switched off).

    FHIRPath equality of a String or Boolean item x with such a collection is exactly Python
    membership: a string equals only an equal string, a boolean only the same boolean
    (`eq_values`), and no string or bool hashes equal to a member of the other type. Numbers,
    dates and quantities are left to `contains_item` (1 = 1.0, @2020 = @2020-01 is empty...),
    as are left items of any other type."""
    if not engine.FOLD_CONSTANTS:
        return None
    items = const_items(ev)
    if items is None or not all(type(x) is str or type(x) is bool for x in items):
        return None
    return frozenset(items)


def _membership(op: str, left: Ev, right: Ev) -> Ev:
    keys = _string_set(right if op == "in" else left)
    if keys is not None:
        coll = list(const_items(right if op == "in" else left) or ())
        if op == "in":

            def in_set(env: Env) -> list:
                a = left(env)
                if not a:
                    return []
                if len(a) > 1:
                    raise EvaluationError(
                        f"'in' expects a single item on the left, got {len(a)}")
                v = val(a[0])
                if type(v) is str or type(v) is bool:
                    return [v in keys]
                return [contains_item(coll, a[0])]

            return in_set

        def contains_set(env: Env) -> list:
            b = right(env)
            if not b:
                return []
            if len(b) > 1:
                raise EvaluationError(
                    f"'contains' expects a single item on the right, got {len(b)}")
            v = val(b[0])
            if type(v) is str or type(v) is bool:
                return [v in keys]
            return [contains_item(coll, b[0])]

        return contains_set

    if op == "in":

        def in_(env: Env) -> list:
            a = left(env)
            if not a:
                return []
            if len(a) > 1:
                raise EvaluationError(f"'in' expects a single item on the left, got {len(a)}")
            return [contains_item(right(env), a[0])]

        return in_

    def contains(env: Env) -> list:
        b = right(env)
        if not b:
            return []
        if len(b) > 1:
            raise EvaluationError(f"'contains' expects a single item on the right, got {len(b)}")
        return [contains_item(left(env), b[0])]

    return contains


def _union(op: str, left: Ev, right: Ev) -> Ev:
    # `a | b | c | ...` parses as nested unions; evaluated as nested, a list of n code
    # literals (the JGZ value-list invariants hold hundreds) would deduplicate O(n^2) items per
    # evaluation. Flattened, all operands share one pass.
    parts = (*getattr(left, "union_parts", (left,)), *getattr(right, "union_parts", (right,)))

    def union(env: Env) -> list:
        seen = Seen()
        return [x for part in parts for x in part(env) if seen.add(x)]

    union.union_parts = parts  # type: ignore[attr-defined]
    return union


# -- arithmetic --------------------------------------------------------------------------------


def _operands(env: Env, left: Ev, right: Ev, op: str) -> tuple[object, object] | None:
    a = single_val(left(env), f"'{op}'")
    b = single_val(right(env), f"'{op}'")
    if a is None or b is None:
        return None
    return a, b


def _temporal_shift(a: Temporal, q: Quantity, sign: int) -> Temporal:
    unit = duration_unit(q)
    if unit is None:
        raise EvaluationError(f"Cannot add {q} to a {type_name(a)}: not a calendar duration")
    amount = int(q.value) * sign
    try:
        return add_duration(a, amount, unit)
    except (ValueError, OverflowError) as exc:
        raise EvaluationError(str(exc)) from None


def _quantity_sum(a: Quantity, b: Quantity, sign: int) -> Quantity:
    if a.unit == b.unit and a.calendar == b.calendar:
        return Quantity(a.value + sign * b.value, a.unit, a.calendar)
    b_in_a = convert_quantity(b, a.unit, a.calendar)
    if b_in_a is None:
        raise EvaluationError(f"Cannot add {a} and {b}: incompatible units")
    return Quantity(a.value + sign * b_in_a.value, a.unit, a.calendar)


def _plus_minus(op: str, left: Ev, right: Ev) -> Ev:
    sign = 1 if op == "+" else -1

    def arith(env: Env) -> list:
        ops = _operands(env, left, right, op)
        if ops is None:
            return []
        a, b = ops
        ta, tb = type(a), type(b)
        if ta in _NUMBERS and tb in _NUMBERS and ta is not bool and tb is not bool:
            return [a + b if sign > 0 else a - b]  # type: ignore[operator]
        if op == "+" and ta is str and tb is str:
            return [a + b]  # type: ignore[operator]
        if ta in (Date, DateTime, Time) and tb is Quantity:
            return [_temporal_shift(a, b, sign)]  # type: ignore[arg-type]
        if ta is Quantity and tb is Quantity:
            return [_quantity_sum(a, b, sign)]  # type: ignore[arg-type]
        raise EvaluationError(f"Cannot apply '{op}' to {type_name(a)} and {type_name(b)}")

    return arith


def _concat(op: str, left: Ev, right: Ev) -> Ev:
    def concat(env: Env) -> list:
        a = single_val(left(env), "'&'")
        b = single_val(right(env), "'&'")
        for v in (a, b):
            if v is not None and type(v) is not str:
                raise EvaluationError(f"'&' expects strings, got {type_name(v)}")
        return [(a or "") + (b or "")]

    return concat


def _as_quantity(v: object) -> Quantity | None:
    if type(v) is Quantity:
        return v  # type: ignore[return-value]
    if type(v) in _NUMBERS and type(v) is not bool:
        return Quantity(Decimal(v), "1")  # type: ignore[arg-type]
    return None


def _multiplicative(op: str, left: Ev, right: Ev) -> Ev:
    def arith(env: Env) -> list:
        ops = _operands(env, left, right, op)
        if ops is None:
            return []
        a, b = ops
        ta, tb = type(a), type(b)
        try:
            if ta in _NUMBERS and tb in _NUMBERS and ta is not bool and tb is not bool:
                return _numeric(op, a, b)  # type: ignore[arg-type]
            if op in ("*", "/") and (ta is Quantity or tb is Quantity):
                qa, qb = _as_quantity(a), _as_quantity(b)
                if qa is not None and qb is not None and not qa.calendar and not qb.calendar:
                    unit = multiply_units(qa.unit, qb.unit, op)
                    if op == "*":
                        return [Quantity(qa.value * qb.value, unit)]
                    if qb.value == 0:
                        return []
                    return [Quantity(qa.value / qb.value, unit)]
        except (DivisionByZero, InvalidOperation, ZeroDivisionError):
            return []
        raise EvaluationError(f"Cannot apply '{op}' to {type_name(a)} and {type_name(b)}")

    return arith


def _numeric(op: str, a: int | Decimal, b: int | Decimal) -> list:
    if op == "*":
        return [a * b]
    if b == 0:
        return []
    if op == "/":
        return [Decimal(a) / Decimal(b)]
    q = abs(a) // abs(b)
    if (a < 0) != (b < 0):
        q = -q
    if op == "div":
        return [int(q)]
    return [a - b * q]


_BUILDERS = {
    "=": _equality, "!=": _equality, "~": _equivalence, "!~": _equivalence,
    "<": _comparison, ">": _comparison, "<=": _comparison, ">=": _comparison,
    "and": _logic, "or": _logic, "xor": _logic, "implies": _logic,
    "in": _membership, "contains": _membership, "|": _union,
    "+": _plus_minus, "-": _plus_minus, "&": _concat,
    "*": _multiplicative, "/": _multiplicative, "div": _multiplicative, "mod": _multiplicative,
}
