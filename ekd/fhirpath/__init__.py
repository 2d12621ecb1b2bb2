"""FHIRPath (http://hl7.org/fhirpath/N1/) for invariants, search parameters and slicing.

CONTRACT: `compile(expression)` returns a callable `(resource, variables=None) -> list` that can
be called many times (compile once, evaluate per resource). Raises `FhirPathError` for syntax
errors. Evaluation errors raise `FhirPathError` too.

ekd evaluates with its own engine (parser and closure compiler in this package) and takes only
the R4 type model from fhirpathpy: fhirpathpy's outdated grammar and its evaluator failed 16% of
the FHIRPath R4 conformance suite, and its per-call overhead is high for invariants that run on
every write. `ekd conformance fhirpath DIR` scores this engine against that suite.

Results are plain Python values: FHIR primitives as their JSON value (decimals as `Decimal`,
so precision survives), complex elements and resources as their JSON dict; values computed by
the expression likewise (dates/times as ISO strings, quantities as FHIR Quantity dicts).
`Expression.items()` gives the typed internal items (see `type_of`/`literal`) for callers that
need FHIRPath types.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ekd.fhirpath import model
from ekd.fhirpath.check import check
from ekd.fhirpath.engine import Env, EvaluationError, Options, compile_ast, type_info
from ekd.fhirpath.model import Node
from ekd.fhirpath.parser import FhirPathSyntaxError, parse
from ekd.fhirpath.values import UCUM, Date, DateTime, Quantity, Temporal, Time, TypeInfo

__all__ = ["Expression", "FhirPathError", "Variables", "compile", "evaluate", "literal", "type_of",
           "variables"]


class FhirPathError(ValueError):
    """An expression that does not parse, or fails to evaluate."""


class Expression:
    """A compiled expression; calling it evaluates against a resource (or element)."""

    __slots__ = ("_ev", "_opts", "expression")

    def __init__(self, expression: str, *, strict: bool = False, as_singleton: bool = False
                 ) -> None:
        self.expression = expression
        self._opts = Options(strict=strict, as_singleton=as_singleton)
        try:
            ast = parse(expression)
            if strict:
                check(ast)
            self._ev = compile_ast(ast, self._opts)
        except (FhirPathSyntaxError, EvaluationError) as exc:
            raise FhirPathError(f"Invalid FHIRPath '{expression}': {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.expression!r})"

    def __call__(self, resource: Any, variables: Mapping[str, Any] | None = None, *,
                 base: str | None = None) -> list:
        return [to_python(x) for x in self.items(resource, variables, base=base)
                if not (type(x) is Node and x.data is None)]

    def items(self, resource: Any, variables: Mapping[str, Any] | None = None, *,
              base: str | None = None) -> list:
        """The result as FHIRPath items: System values and `Node`s (typed resource content).

        `base` gives the type (or element path, e.g. 'Patient.contact') of a `resource` that
        is an element rather than a resource.
        """
        root = _collection(resource, base)
        vars_: dict[str, list]
        if type(variables) is Variables:
            vars_ = {"context": root, "resource": root, "rootResource": root, **variables}
        else:
            vars_ = {"context": root, "resource": root, "rootResource": root}
        if variables and type(variables) is not Variables:
            for name, value in variables.items():
                vars_[name] = _collection(value, None)
            if "resource" in variables and "rootResource" not in variables:
                vars_["rootResource"] = vars_["resource"]
        try:
            return self._ev(Env(root, vars_, self._opts))
        except EvaluationError as exc:
            raise FhirPathError(f"FHIRPath '{self.expression}' failed: {exc}") from None
        except FhirPathError:
            raise
        except Exception as exc:  # an engine bug must not escape as a random exception type
            raise FhirPathError(
                f"FHIRPath '{self.expression}' failed: {type(exc).__name__}: {exc}") from exc


class Variables(dict):
    """Variables converted to FHIRPath collections once (see `variables`), for callers that
    evaluate many expressions with the same `%resource`: passed as `variables`, they are used
    as they are instead of being wrapped again on every call. Treat as read-only."""


def variables(values: Mapping[str, Any]) -> Variables:
    """`values` as FHIRPath collections, exactly as `Expression.items` would convert them."""
    out = Variables()
    for name, value in values.items():
        out[name] = _collection(value, None)
    if "resource" in values and "rootResource" not in values:
        out["rootResource"] = out["resource"]
    return out


@lru_cache(maxsize=4096)
def compile(expression: str, *, strict: bool = False, as_singleton: bool = False) -> Expression:
    """Compile (cached) `expression`.

    strict: also reject what can be proven wrong without data (`name.given1`, elements behind
    `as` that the type lacks, first()/skip() on children()) and non-Boolean iif() criteria;
    by default such paths just yield nothing. Misusing a choice element's type suffix
    (`valueQuantity`) is an error in both modes, as in the reference implementation.

    as_singleton: make `as` on several items an error, as FHIRPath 2.0 says. Off by default
    because R4's own artifacts apply `as` to collections: the dom-3 invariant on every
    DomainResource (`descendants().as(canonical)`) and the useContext search parameters of all
    canonical resources (`useContext.value as CodeableConcept`); the reference validator also
    relaxes the rule for R4.
    """
    return Expression(expression, strict=strict, as_singleton=as_singleton)


def evaluate(resource: Any, expression: str, variables: Mapping[str, Any] | None = None, *,
             base: str | None = None) -> list:
    return compile(expression)(resource, variables, base=base)


def _collection(value: Any, base: str | None) -> list:
    if type(value) is dict:  # the common case: a resource or an element
        return [model.resource_node(value, base)]
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [x for v in value for x in _collection(v, base)]
    if isinstance(value, Node | Temporal | Quantity | TypeInfo | str | bool | int | Decimal):
        return [value]
    if isinstance(value, float):
        return [Decimal(repr(value))]
    return [model.resource_node(value, base)]


def to_python(item: Any) -> Any:
    """An item as a plain Python/JSON value (see the module docstring)."""
    if type(item) is Node:
        if item.type in model.PRIMITIVES:
            v = item.value
            return item.data if isinstance(v, Temporal) or v is None else v
        return item.data
    if isinstance(item, Temporal):
        return str(item)
    if type(item) is Quantity:
        if item.calendar:
            return {"value": item.value, "unit": item.unit}
        return {"value": item.value, "unit": item.unit, "system": UCUM, "code": item.unit}
    if type(item) is TypeInfo:
        return {"namespace": item.namespace, "name": item.name}
    return item


def type_of(item: Any) -> TypeInfo:
    """The FHIRPath type of an item from `Expression.items()`."""
    return type_info(item)


def literal(item: Any) -> str:
    """An item in FHIRPath literal form without quotes: @2014-01-01, 1.50 'cm', true."""
    if type(item) is Node:
        v = item.value
        return json_literal(item.data) if v is item or v is None else literal(v)
    if item is True or item is False:
        return "true" if item else "false"
    if isinstance(item, Decimal):
        return format(item, "f")
    if isinstance(item, Time):
        return f"@T{item}"
    if isinstance(item, Date | DateTime):
        return f"@{item}"
    return str(item)


def json_literal(data: Any) -> str:
    import json

    return json.dumps(data, sort_keys=True, default=str)
