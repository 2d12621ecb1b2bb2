"""Compiles a FHIRPath AST into nested closures and evaluates them.

Each expression becomes a function `(env) -> list` and each invocation after a dot a function
`(input, env) -> list`, so evaluating an invariant is a chain of plain Python calls with no
tree walking, dictionary dispatch or re-parsing. Items in collections are System values (bool,
int, Decimal, str, Date, DateTime, Time, Quantity) or `Node`s wrapping resource content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any

from ekd.fhirpath import model
from ekd.fhirpath.model import Node
from ekd.fhirpath.parser import Ast
from ekd.fhirpath.values import (
    Date,
    DateTime,
    Quantity,
    Temporal,
    Time,
    TypeInfo,
    compare_temporal,
    quantity_pair,
)

log = logging.getLogger("ekd.fhirpath")


class EvaluationError(ValueError):
    """An expression that is well-formed but cannot be evaluated (or is semantically wrong)."""


Ev = Callable[["Env"], list]
Step = Callable[[list, "Env"], list]

_UNSET: Any = object()
_NUMBERS = (int, Decimal)

#: Evaluate sub-expressions made only of literals once, at compile time (see
#: `Compiler._fold`), and let `in`/`contains` test strings against a constant collection of
#: strings with a set. A switch only so benchmarks and tests can compare with and without;
#: it is read when an expression is compiled (`ekd.fhirpath.compile` caches compiled ones).
FOLD_CONSTANTS = True

#: Operators whose result depends on nothing but their operands (no focus, variables, Decimal
#: context or clock), so constant operands give a constant result. Arithmetic is left out, and
#: so are operands holding quantities (comparing them may convert units): Decimal arithmetic
#: depends on the thread's decimal context at evaluation time.
_FOLDABLE = frozenset({"|", "=", "!=", "~", "!~", "<", ">", "<=", ">=", "and", "or", "xor",
                       "implies", "in", "contains", "&"})


def constant(items: list | tuple) -> Ev:
    """An Ev that always yields `items` (a fresh list per call: callers may mutate results).

    The items are also exposed as the tuple `ev.const`, which is how the compiler recognises a
    constant operand (`const_items`)."""
    frozen = tuple(items)

    def const(_env: Env) -> list:
        return list(frozen)

    const.const = frozen  # type: ignore[attr-defined]
    return const


def const_items(ev: Callable[..., list]) -> tuple | None:
    """The items of a constant Ev (see `constant`), None if it is not known to be constant."""
    return getattr(ev, "const", None)


class Options:
    """Evaluation switches fixed at compile time."""

    __slots__ = ("as_singleton", "strict")

    def __init__(self, strict: bool = False, as_singleton: bool = False) -> None:
        self.strict = strict
        self.as_singleton = as_singleton


class Env:
    """Evaluation context: the focus ($this), $index, $total and the variables."""

    __slots__ = ("focus", "index", "opts", "total", "vars")

    def __init__(self, focus: list, vars: dict[str, list], opts: Options,
                 index: int | None = None, total: Any = _UNSET) -> None:
        self.focus = focus
        self.vars = vars
        self.opts = opts
        self.index = index
        self.total = total

    def item(self, item: Any, index: int) -> Env:
        return Env([item], self.vars, self.opts, index, self.total)


# --------------------------------------------------------------------------------------------
# Values and singleton evaluation


def val(x: Any) -> Any:
    """The System value of an item: primitives' values, FHIR quantities as Quantity."""
    if type(x) is Node:
        v = x.value
        if v is x and x.type in model.QUANTITY_TYPES:
            q = model.node_quantity(x)
            return q if q is not None else x
        return v
    return x


def single(coll: list, what: str) -> Any:
    """The one item of a singleton collection, None for empty; error for more items."""
    n = len(coll)
    if n == 1:
        return coll[0]
    if n == 0:
        return None
    raise EvaluationError(f"{what} expects a single item, got {n}")


def single_val(coll: list, what: str) -> Any:
    item = single(coll, what)
    return None if item is None else val(item)


def to_bool(coll: list, what: str, strict: bool = False) -> bool | None:
    """Singleton evaluation of collections as a Boolean (FHIRPath §4.5)."""
    n = len(coll)
    if n == 0:
        return None
    if n > 1:
        raise EvaluationError(f"{what} expects a single boolean, got {n} items")
    v = val(coll[0])
    if v is True or v is False:
        return v
    if strict:
        raise EvaluationError(f"{what} expects a boolean, got {type_name(coll[0])}")
    return True


def type_name(item: Any) -> str:
    if type(item) is Node:
        return item.type
    return SYSTEM_NAMES.get(type(item), type(item).__name__)


SYSTEM_NAMES: dict[type, str] = {
    bool: "Boolean", int: "Integer", Decimal: "Decimal", str: "String", Date: "Date",
    DateTime: "DateTime", Time: "Time", Quantity: "Quantity", TypeInfo: "TypeInfo",
}


def type_info(item: Any) -> TypeInfo:
    if type(item) is Node:
        return TypeInfo("FHIR", item.type)
    return TypeInfo("System", type_name(item))


def scale(d: int | Decimal) -> int:
    if isinstance(d, int):
        return 0
    exp = d.as_tuple().exponent
    return -exp if isinstance(exp, int) and exp < 0 else 0


# --------------------------------------------------------------------------------------------
# Equality, equivalence, comparison


def eq_values(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in _NUMBERS and tb in _NUMBERS:
        return a == b
    if ta is str and tb is str:
        return a == b
    if isinstance(a, Temporal) and isinstance(b, Temporal):
        if (ta is Time) != (tb is Time):
            return False
        c = compare_temporal(a, b)
        return None if c is None else c == 0
    if ta is Quantity and tb is Quantity:
        pair = quantity_pair(a, b)
        return None if pair is None else pair[0] == pair[1]
    if ta is Node and tb is Node:
        return a.data == b.data and a.ext == b.ext
    if ta is TypeInfo and tb is TypeInfo:
        return a == b
    return False


def eq_items(a: Any, b: Any) -> bool | None:
    return eq_values(val(a), val(b))


def _norm_str(s: str) -> str:
    return " ".join(s.split()).casefold()


def _dec_equiv(a: int | Decimal, b: int | Decimal) -> bool:
    """Equal when rounded to the precision of the less precise operand."""
    p = min(scale(a), scale(b))
    with localcontext(Context(prec=80)):
        q = Decimal(1).scaleb(-p)
        return Decimal(a).quantize(q, ROUND_HALF_UP) == Decimal(b).quantize(q, ROUND_HALF_UP)


def _json_equiv(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = {k for k in a if k != "id"} | {k for k in b if k != "id"}
        return all(_json_equiv(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equiv(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        return _norm_str(a) == _norm_str(b)
    return bool(a == b)


def equiv_values(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in _NUMBERS and tb in _NUMBERS:
        return _dec_equiv(a, b)
    if ta is str and tb is str:
        return _norm_str(a) == _norm_str(b)
    if isinstance(a, Temporal) and isinstance(b, Temporal):
        if (ta is Time) != (tb is Time):
            return False
        return compare_temporal(a, b) == 0
    if ta is Quantity and tb is Quantity:
        pair = quantity_pair(a, b)
        if pair is None:
            return False
        return _dec_equiv(*pair)
    if ta is Node and tb is Node:
        return _json_equiv(a.data, b.data)
    return False


def compare_values(a: Any, b: Any, op: str) -> int | None:
    """-1/0/1 for ordered operands, None when unknown; error for incomparable types."""
    ta, tb = type(a), type(b)
    if ta in _NUMBERS and tb in _NUMBERS and ta is not bool and tb is not bool:
        return (a > b) - (a < b)
    if ta is str and tb is str:
        return (a > b) - (a < b)
    if isinstance(a, Temporal) and isinstance(b, Temporal) and (ta is Time) == (tb is Time):
        return compare_temporal(a, b)
    if ta is Quantity and tb is Quantity:
        pair = quantity_pair(a, b)
        if pair is None:
            return None
        return (pair[0] > pair[1]) - (pair[0] < pair[1])
    raise EvaluationError(f"Cannot compare {type_name(a)} and {type_name(b)} with '{op}'")


class Seen:
    """Membership by FHIRPath equality, hashing what can be hashed."""

    __slots__ = ("hashed", "others")

    def __init__(self) -> None:
        self.hashed: set[Any] = set()
        self.others: list[Any] = []

    @staticmethod
    def _key(v: Any) -> Any:
        t = type(v)
        if t is bool:
            return ("b", v)
        if t is int or t is Decimal:
            return ("n", v)
        if t is str:
            return ("s", v)
        return None

    def add(self, item: Any) -> bool:
        """Record `item`; False when an equal item was seen before."""
        v = val(item)
        k = self._key(v)
        if k is not None:
            if k in self.hashed:
                return False
            self.hashed.add(k)
            return True
        for o in self.others:
            if eq_values(o, v) is True:
                return False
        self.others.append(v)
        return True


def distinct(items: list) -> list:
    seen = Seen()
    return [x for x in items if seen.add(x)]


def contains_item(coll: list, item: Any) -> bool:
    v = val(item)
    return any(eq_values(val(x), v) is True for x in coll)


# --------------------------------------------------------------------------------------------
# Type specifiers

SYSTEM_TYPES = frozenset({"Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time",
                          "Quantity"})


def resolve_type(parts: tuple[str, ...]) -> tuple[str, str]:
    if len(parts) == 2:
        ns, name = parts
        if ns == "FHIR":
            if name not in model.FHIR_TYPES:
                raise EvaluationError(f"Unknown FHIR type '{name}'")
            return ns, name
        if ns == "System":
            return ns, name
        raise EvaluationError(f"Unknown type namespace '{ns}'")
    if len(parts) != 1:
        raise EvaluationError(f"Invalid type specifier '{'.'.join(parts)}'")
    name = parts[0]
    if name in model.FHIR_TYPES:
        return "FHIR", name
    if name in SYSTEM_TYPES:
        return "System", name
    raise EvaluationError(f"Unknown type '{name}'")


def type_matches(item: Any, ns: str, name: str, exact_primitives: bool) -> bool:
    if type(item) is Node:
        if ns != "FHIR":
            return False
        if item.type == name:
            return True
        if exact_primitives and item.type in model.PRIMITIVES:
            return False
        return model.is_subtype(item.type, name)
    return ns == "System" and type_name(item) == name


def ast_type(arg: Ast) -> tuple[str, ...]:
    """A function argument that names a type (ofType(Patient), as(FHIR.string))."""
    if arg.kind == "type":
        return arg.value  # type: ignore[no-any-return]
    if arg.kind == "member":
        return (arg.value,)
    if arg.kind == "chain" and arg.children[0].kind == "member" and \
            arg.children[1].kind == "member":
        return (arg.children[0].value, arg.children[1].value)
    raise EvaluationError("Expected a type name")


# --------------------------------------------------------------------------------------------
# The compiler


FunctionBuilder = Callable[["Compiler", list[Ast]], Step]
FUNCTIONS: dict[str, FunctionBuilder] = {}
STANDARD_CONSTANTS = {
    "ucum": "http://unitsofmeasure.org",
    "sct": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
    "us-zip": "[0-9]{5}(-[0-9]{4}){0,1}",
}


class Compiler:
    def __init__(self, opts: Options) -> None:
        self.opts = opts

    def expr(self, node: Ast) -> Ev:
        method = getattr(self, "_e_" + node.kind)
        return method(node)  # type: ignore[no-any-return]

    def step(self, node: Ast, at_root: bool = False) -> Step:
        """An invocation applied to an input collection."""
        if node.kind == "member":
            return self._member(node.value, at_root)
        if node.kind == "function":
            builder = FUNCTIONS.get(node.value)
            if builder is None:
                raise EvaluationError(f"Unknown function '{node.value}'")
            return builder(self, node.children)
        if node.kind == "special":
            ev = self._e_special(node)
            return lambda _inp, env: ev(env)
        raise EvaluationError(f"Cannot invoke {node.kind}")

    # -- terms ---------------------------------------------------------------------------

    def _e_literal(self, node: Ast) -> Ev:
        kind, raw = node.value
        value: Any
        if kind == "string" or kind == "boolean":
            value = raw
        elif kind == "number":
            value = int(raw) if "." not in raw else Decimal(raw)
        elif kind == "date":
            value = Date.parse(raw)
        elif kind == "datetime":
            value = DateTime.parse(raw)
        elif kind == "time":
            value = Time.parse(raw)
        else:
            number, unit, quoted = raw
            value = Quantity(Decimal(number), unit, not quoted)
        if value is None:
            raise EvaluationError(f"Invalid {kind} literal '{raw}'")
        if FOLD_CONSTANTS:
            return constant([value])
        return lambda _env: [value]

    def _e_empty(self, node: Ast) -> Ev:
        if FOLD_CONSTANTS:
            return constant([])
        return lambda _env: []

    def _e_paren(self, node: Ast) -> Ev:
        return self.expr(node.children[0])

    def _e_constant(self, node: Ast) -> Ev:
        name: str = node.value
        fixed: str | None = STANDARD_CONSTANTS.get(name)
        if name.startswith("vs-"):
            fixed = "http://hl7.org/fhir/ValueSet/" + name[3:]
        elif name.startswith("ext-"):
            fixed = "http://hl7.org/fhir/StructureDefinition/" + name[4:]

        def constant(env: Env) -> list:
            v = env.vars.get(name, _UNSET)
            if v is not _UNSET:
                return v  # type: ignore[no-any-return]
            if fixed is not None:
                return [fixed]
            raise EvaluationError(f"Undefined environment variable %{name}")

        return constant

    def _e_special(self, node: Ast) -> Ev:
        if node.value == "this":
            return lambda env: env.focus
        if node.value == "index":
            return lambda env: [] if env.index is None else [env.index]

        def total(env: Env) -> list:
            if env.total is _UNSET:
                raise EvaluationError("$total is only defined within aggregate()")
            return env.total  # type: ignore[no-any-return]

        return total

    def _e_member(self, node: Ast) -> Ev:
        st = self._member(node.value, at_root=True)
        return lambda env: st(env.focus, env)

    def _e_function(self, node: Ast) -> Ev:
        st = self.step(node)
        return lambda env: st(env.focus, env)

    def _e_chain(self, node: Ast) -> Ev:
        target, inv = node.children
        ev = self.expr(target)
        st = self.step(inv)
        return lambda env: st(ev(env), env)

    def _e_index(self, node: Ast) -> Ev:
        ev_coll = self.expr(node.children[0])
        ev_idx = self.expr(node.children[1])

        def index(env: Env) -> list:
            coll = ev_coll(env)
            i = single_val(ev_idx(env), "Indexer")
            if i is None:
                return []
            if type(i) is not int:
                raise EvaluationError("Indexer expects an integer")
            return [coll[i]] if 0 <= i < len(coll) else []

        return index

    def _e_unary(self, node: Ast) -> Ev:
        ev = self.expr(node.children[0])
        if node.value == "+":

            def plus(env: Env) -> list:
                v = single_val(ev(env), "Unary +")
                if v is None:
                    return []
                if type(v) not in _NUMBERS and type(v) is not Quantity:
                    raise EvaluationError("Unary + applies to numbers and quantities")
                return [v]

            return plus

        def minus(env: Env) -> list:
            v = single_val(ev(env), "Unary -")
            if v is None:
                return []
            if type(v) is int:
                return [-v]
            if type(v) is Decimal:
                return [-v if v else abs(v)]
            if type(v) is Quantity:
                return [Quantity(-v.value, v.unit, v.calendar)]
            raise EvaluationError(f"Unary - cannot be applied to {type_name(v)}")

        return minus

    def _e_type_op(self, node: Ast) -> Ev:
        ev = self.expr(node.children[0])
        ns, name = resolve_type(node.children[1].value)
        if node.value == "is":

            def is_(env: Env) -> list:
                item = single(ev(env), "is")
                if item is None:
                    return []
                return [type_matches(item, ns, name, False)]

            return is_

        def as_(env: Env) -> list:
            coll = ev(env)
            if len(coll) > 1 and env.opts.as_singleton:
                raise EvaluationError(f"'as' expects a single item, got {len(coll)}")
            return [x for x in coll if type_matches(x, ns, name, True)]

        return as_

    def _e_binary(self, node: Ast) -> Ev:
        op = node.value
        if op == "|":
            # A chain `a | b | c | ...` parses as left-nested unions; compile its operands
            # iteratively (value lists have hundreds) and fold the whole chain at once.
            evs = [self.expr(n) for n in _union_operands(node)]
            ev = evs[0]
            for nxt in evs[1:]:
                ev = binary(op, ev, nxt)
            operands = evs
        else:
            operands = [self.expr(node.children[0]), self.expr(node.children[1])]
            ev = binary(op, *operands)
        if FOLD_CONSTANTS and op in _FOLDABLE and all(_foldable(e) for e in operands):
            return self._fold(ev)
        return ev

    def _fold(self, ev: Ev) -> Ev:
        """`ev`, which depends on constants only, evaluated now. If that fails, it is kept as
        is: the error is the evaluation's to report, not the compiler's."""
        try:
            items = ev(Env([], {}, self.opts))
        except Exception:
            return ev
        return constant(items)

    def _e_type(self, node: Ast) -> Ev:
        raise EvaluationError("A type name cannot be evaluated")

    # -- members ---------------------------------------------------------------------------

    def _member(self, name: str, at_root: bool) -> Step:
        strict = self.opts.strict
        is_type_name = at_root and name[:1].isupper()
        plans: dict[str, Any] = {}  # see model.member

        def member(inp: list, env: Env) -> list:
            out: list = []
            if is_type_name:
                matched = [x for x in inp if type(x) is Node and model.is_subtype(x.type, name)]
                if matched:
                    return matched
                if name in model.FHIR_TYPES:
                    if strict and inp:
                        raise EvaluationError(
                            f"The context is {type_name(inp[0])}, not {name}")
                    return out
            for item in inp:
                if type(item) is Node:
                    if not model.member(item, name, out, plans):
                        _unknown_member(item, name, strict)
                elif type(item) is TypeInfo and name in ("name", "namespace"):
                    out.append(getattr(item, name))
                elif type(item) is Quantity and name in ("value", "unit"):
                    out.append(item.value if name == "value" else item.unit)
            return out

        return member


def _foldable(ev: Ev) -> bool:
    items = const_items(ev)
    return items is not None and not any(type(x) is Quantity for x in items)


def _union_operands(node: Ast) -> list[Ast]:
    """The operands of a chain of `|`, left to right, without recursion."""
    out: list[Ast] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind == "binary" and n.value == "|":
            stack.append(n.children[1])
            stack.append(n.children[0])
        else:
            out.append(n)
    return out


def _unknown_member(item: Node, name: str, strict: bool) -> None:
    proper = model.choice_misuse(item.path, name) if item.path else None
    if proper is not None:
        raise EvaluationError(
            f"'{name}' is not an element of {item.type}: choice elements are named without "
            f"their type ('{proper}'; use {proper}.ofType(...) or {proper} as ...)")
    if strict:
        raise EvaluationError(f"'{name}' is not an element of {item.type}")


def compile_ast(node: Ast, opts: Options) -> Ev:
    return Compiler(opts).expr(node)


# Operators and the function library build on the helpers above (and register into FUNCTIONS).
from ekd.fhirpath import functions as _functions  # noqa: E402,F401
from ekd.fhirpath.operators import binary  # noqa: E402
