"""Static checks for strict mode: what can be known about an expression without data.

At run time `(Observation.value as Period).unit` just yields nothing, because no Period is
there to complain about; only the declared types show that Period has no `unit`. Likewise
`children().skip(1)` depends on an order children() does not define. Strict mode runs this pass
at compile time, following the types the expression names itself (a leading type name, `as`,
`ofType`), so profile invariants and search expressions can be linted before they meet data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ekd.fhirpath import model
from ekd.fhirpath.engine import EvaluationError, ast_type, resolve_type
from ekd.fhirpath.parser import Ast

# Functions whose result depends on the order of their input.
_ORDER_DEPENDENT = frozenset({"first", "last", "tail", "skip", "take"})
# Functions that return (part of) their input unchanged.
_PASS_THROUGH = frozenset({"where", "first", "last", "tail", "skip", "take", "single", "trace",
                           "distinct", "intersect", "exclude"})
_UNORDERED = frozenset({"children", "descendants"})


@dataclass(frozen=True, slots=True)
class Info:
    types: frozenset[str] | None  # model paths the items may have; None: not known
    ordered: bool = True


UNKNOWN = Info(None)


def _known(types: set[str]) -> frozenset[str] | None:
    if not types or types & {"Resource", "DomainResource"}:
        return None  # contained/entry resources: the actual type is only known from data
    return frozenset(types)


def _member(info: Info, name: str, at_root: bool, pos: int) -> Info:
    if at_root and name[:1].isupper() and name in model.FHIR_TYPES:
        return Info(frozenset({name}))
    if info.types is None:
        return UNKNOWN
    found: set[str] = set()
    for path in info.types:
        el = model.element(path, name)
        if el is None:
            continue
        for _key, type_name, child in el.keys:
            found.add(child or type_name)
    if not found:
        owner = " or ".join(sorted(info.types))
        raise EvaluationError(f"'{name}' (at {pos}) is not an element of {owner}")
    return Info(_known(found))


def check(node: Ast, focus: Info = UNKNOWN) -> Info:
    """The static info of `node` evaluated on `focus`; raises for provable mistakes."""
    kind = node.kind
    if kind == "paren":
        return check(node.children[0], focus)
    if kind == "member":
        return _member(focus, node.value, True, node.pos)
    if kind == "chain":
        target = check(node.children[0], focus)
        inv = node.children[1]
        if inv.kind == "member":
            return _member(target, inv.value, False, inv.pos)
        if inv.kind == "function":
            return _function(inv, target, focus)
        return UNKNOWN
    if kind == "function":
        return _function(node, focus, focus)
    if kind == "index":
        coll = check(node.children[0], focus)
        check(node.children[1], focus)
        if not coll.ordered:
            raise EvaluationError(f"Indexing (at {node.pos}) an unordered collection")
        return coll
    if kind == "type_op":
        check(node.children[0], focus)
        ns, name = resolve_type(node.children[1].value)
        if node.value == "as" and ns == "FHIR":
            return Info(_known({name}))
        return UNKNOWN
    for child in node.children:
        if child.kind != "type":
            check(child, focus)
    return UNKNOWN


def _function(node: Ast, target: Info, focus: Info) -> Info:
    name: str = node.value
    if name in _ORDER_DEPENDENT and not target.ordered:
        raise EvaluationError(f"{name}() (at {node.pos}) depends on the order of an unordered "
                              "collection")
    if name in ("ofType", "as") and len(node.children) == 1:
        ns, tname = resolve_type(ast_type(node.children[0]))
        return Info(_known({tname}) if ns == "FHIR" else None)
    if name == "is":
        return UNKNOWN
    item = Info(target.types)
    for arg in node.children:
        check(arg, item if name in ("where", "select", "exists", "all", "repeat") else focus)
    if name in _UNORDERED:
        return Info(None, ordered=False)
    if name in _PASS_THROUGH:
        return target
    return UNKNOWN
