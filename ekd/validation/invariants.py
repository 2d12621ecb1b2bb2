"""Invariants (`ElementDefinition.constraint`): compiled once, evaluated per element.

Most invariants go through the FHIRPath engine (`ekd.fhirpath.compile`). A handful of base
invariants sit on nearly every element or resource (ele-1 on all 6,790 base elements, ext-1 on
every extension, dom-2..6 on every resource); they get native implementations here, because
they dominate the cost of a validation and because `hasValue()` is not in every engine. A
native implementation is only used when the expression is exactly the one it was written for,
so a profile that redefines `dom-3` differently gets its own expression evaluated.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ekd.fhirpath import Expression, FhirPathError, to_python
from ekd.fhirpath import compile as compile_fhirpath
from ekd.fhirpath import variables as fhirpath_variables
from ekd.fhirpath.deps import focus_members
from ekd.fhirpath.model import Node

UCUM = "http://unitsofmeasure.org"

#: Let invariants that read only some members of their focus remember outcomes (see
#: `_remembering`). A switch only so benchmarks and tests can compare; read when an invariant
#: is compiled.
REMEMBER_OUTCOMES = True


@dataclass(slots=True)
class Scope:
    """What an invariant may look at besides its focus: `%resource` and `%rootResource`."""

    resource: dict
    root: dict
    #: The FHIRPath variables for these, built on the first engine evaluation and reused by the
    #: others on the same resource (wrapping them anew for each invariant cost more than
    #: evaluating most invariants).
    fhirpath_vars: Any = field(default=None, compare=False, repr=False)


#: (focus, scope, base) -> True (holds), False (violated), None (could not be evaluated);
#: `base` is the focus's type or element path (`Quantity`, `Observation.component`) for an
#: engine that needs it to resolve choice elements and `type()` on a bare JSON object.
Evaluator = Callable[[Any, Scope, "str | None"], "bool | None"]


@dataclass(slots=True, eq=False)
class Invariant:
    key: str
    severity: str  # error | warning
    human: str
    expression: str
    source: str  # canonical url of the StructureDefinition that defines it
    evaluate: Evaluator
    #: Element names that are choices ([x]) in the focus's definition: FHIRPath engines that
    #: see a bare JSON object cannot know that `value` means `valueQuantity`.
    choices: tuple[str, ...] = ()
    failure: str | None = None  # why the expression could not be compiled, if it could not
    #: Evaluated natively from the focus alone (not `%resource`...): cheaper to evaluate
    #: again than to look the outcome up in the walker's cache.
    native: bool = False


def compile_invariant(constraint: dict, source: str, choices: tuple[str, ...] = ()) -> Invariant:
    key = str(constraint.get("key", "?"))
    expression = constraint.get("expression") or ""
    severity = "warning" if constraint.get("severity") == "warning" else "error"
    human = str(constraint.get("human", ""))
    expression = ERRATA.get((key, expression), expression)
    native = _NATIVE.get((key, expression)) or _NATIVE_BY_EXPRESSION.get(expression)
    if native is not None:
        return Invariant(key, severity, human, expression, source, native, choices,
                         native=native is not _ref1)
    if not expression:
        return Invariant(key, severity, human, expression, source, _skip, choices,
                         failure="no expression")
    try:
        fn = compile_fhirpath(expression)
    except FhirPathError as exc:
        return Invariant(key, severity, human, expression, source, _skip, choices,
                         failure=str(exc))
    evaluate = _engine(fn, choices)
    if REMEMBER_OUTCOMES and isinstance(fn, Expression):
        members = focus_members(expression)
        if members is not None:
            evaluate = _remembering(evaluate, members, False)
        else:
            members = focus_members(expression, resource_is_focus=True)
            if members is not None:
                evaluate = _remembering(evaluate, members, True)
    if expression in _ONLY_WITH_CONTAINED:
        evaluate = _when_contained(evaluate)
    return Invariant(key, severity, human, expression, source, evaluate, choices)


def _skip(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    return None


def _engine(fn: Callable[..., list], choices: tuple[str, ...]) -> Evaluator:
    typed = _accepts_base(fn)
    ours = isinstance(fn, Expression)

    def run(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
        variables: Any
        if ours:
            variables = scope.fhirpath_vars
            if variables is None:
                variables = scope.fhirpath_vars = fhirpath_variables(
                    {"resource": scope.resource, "rootResource": scope.root, "ucum": UCUM})
        else:
            variables = {"resource": scope.resource, "rootResource": scope.root, "ucum": UCUM}
        try:
            if typed and base is not None:
                if ours:
                    return _item_truth(fn.items(focus, variables, base=base))
                result = fn(focus, variables, base=base)
            else:
                if choices and isinstance(focus, dict) and "resourceType" not in focus:
                    focus = _with_choice_aliases(focus, choices)
                if ours:
                    return _item_truth(fn.items(focus, variables))
                result = fn(focus, variables)
        except FhirPathError:
            return None
        return _truth(result)
    return run


#: Outcomes an invariant remembers (then it starts afresh), and the largest part of a focus it
#: remembers one by (serialised): enough for a dossier's codes and values, bounded memory.
_REMEMBER_COUNT = 512
_REMEMBER_BYTES = 1024
#: After this many lookups, an invariant whose foci rarely repeat (one in four) stops
#: remembering: building the key would only add to the evaluation.
_REMEMBER_TRIAL = 256
_UNKNOWN = object()


def _remembering(evaluate: Evaluator, members: tuple[str, ...], resource_is_focus: bool
                 ) -> Evaluator:
    """`evaluate`, answering again from what it found for an equal focus before.

    The invariants of a JGZ dossier run on a hundred observations that differ in ids, dates
    and subjects but share a few codes: an invariant that reads only `code` and `value`
    (`ekd.fhirpath.deps.focus_members` proves which members it reads) has the same outcome
    for every focus with equal `code` and `value`. The key is those members' JSON, with the
    focus's type; a focus that cannot be serialised exactly is simply evaluated.
    `resource_is_focus`: the members were found on the understanding that `%resource` is the
    focus (obs-7 reads `%resource.code`), so only such evaluations are remembered."""
    outcomes: dict[tuple[str | None, bytes], bool | None] = {}
    counts = [0, 0]  # lookups, hits

    def run(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
        if type(focus) is not dict or (resource_is_focus and scope.resource is not focus) or (
                counts[0] >= _REMEMBER_TRIAL and counts[1] * 4 < counts[0]):
            return evaluate(focus, scope, base)
        blob = focus_key(focus, members)
        if blob is None:
            return evaluate(focus, scope, base)
        # A digest, not the JSON itself: no fragment of a patient's data stays in memory.
        key = (base, hashlib.blake2b(blob, digest_size=16).digest())
        counts[0] += 1
        outcome = outcomes.get(key, _UNKNOWN)
        if outcome is not _UNKNOWN:
            counts[1] += 1
            return outcome  # type: ignore[return-value]
        outcome = evaluate(focus, scope, base)
        if len(outcomes) >= _REMEMBER_COUNT:
            outcomes.clear()
        outcomes[key] = outcome
        return outcome

    return run


def focus_key(focus: dict, members: tuple[str, ...]) -> bytes | None:
    """The JSON of the focus's `resourceType` and of every property an expression reading
    `members` may see (`value` covers `valueQuantity` and `_valueString`), in the focus's
    order; None when that is not exact (JSON null also stands for NaN and infinities, and
    subclasses of JSON types may compare differently) or too large to remember."""
    selected: list[Any] = []
    for k, v in focus.items():
        if type(k) is not str:
            return None
        if k == "resourceType" or k.lstrip("_").startswith(members):
            selected.append(k)
            selected.append(v)
    try:
        blob = orjson.dumps(selected, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except TypeError:  # orjson.JSONEncodeError: other types, integers beyond 64 bits
        return None
    if len(blob) > _REMEMBER_BYTES or b"null" in blob:
        return None
    return blob


def _item_truth(items: list) -> bool | None:
    """`_truth(expression(...))` computed on `Expression.items(...)`: the same filtering of
    value-less primitives and conversion as `Expression.__call__`, for the one item that
    decides, without converting a whole result."""
    if len(items) == 1:
        x = items[0]
        if x is True or x is False:  # the usual outcome: a System Boolean
            return x
    kept = [x for x in items if not (type(x) is Node and x.data is None)]
    if len(kept) == 1:
        return _truth([to_python(kept[0])])
    return True if kept else None


def _accepts_base(fn: Callable[..., list]) -> bool:
    """Whether the engine takes the focus's type (`base=`), beyond the compile() contract."""
    import inspect

    try:
        return "base" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _with_choice_aliases(focus: dict, choices: tuple[str, ...]) -> dict:
    """`{"valueQuantity": q}` also as `{"value": q}`, so `value.exists()` sees it."""
    extra = {}
    for key, value in focus.items():
        for name in choices:
            if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
                extra[name] = value
    return {**focus, **extra} if extra else focus


def _truth(result: list) -> bool | None:
    """FHIRPath's singleton evaluation of a collection as a boolean."""
    if not result:
        return None  # empty: the invariant does not apply (treated as satisfied)
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return True


# -- native implementations --------------------------------------------------------------------


def has_value_or_children(focus: Any) -> bool:
    """ele-1: `hasValue() or (children().count() > id.count())`."""
    if isinstance(focus, dict):
        return len(focus) > ("id" in focus)  # a key other than "id"
    return focus is not None


def _ele1(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    return has_value_or_children(focus)


def _ext1(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    """ext-1: an extension has either nested extensions or a value, not both."""
    if not isinstance(focus, dict):
        return None
    return ext1_holds(focus)


def ext1_holds(extension: dict) -> bool:
    """A primitive value may be present only through its own extensions (`_valueString`)."""
    has_value = any(k.startswith(("value", "_value")) for k in extension)
    return bool(extension.get("extension")) != has_value


def _dom2(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    contained = focus.get("contained") if isinstance(focus, dict) else None
    if not isinstance(contained, list):
        return True
    return not any(isinstance(c, dict) and c.get("contained") for c in contained)


def _dom4(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    for c in _contained(focus):
        meta = c.get("meta")
        if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
            return False
    return True


def _dom5(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    for c in _contained(focus):
        meta = c.get("meta")
        if isinstance(meta, dict) and meta.get("security"):
            return False
    return True


def _dom6(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    text = focus.get("text") if isinstance(focus, dict) else None
    return isinstance(text, dict) and bool(text.get("div"))


def _dom3(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    """dom-3: every contained resource is referenced from the rest of the resource (or refers
    back to it with `#`)."""
    contained = _contained(focus)
    if not contained:
        return True
    refs: set[str] = set()
    _collect_strings(focus, refs)
    if "#" in refs:
        return True
    return all(f"#{c.get('id')}" in refs for c in contained)


def unreferenced_contained(resource: dict) -> list[int]:
    """Indexes of contained resources that dom-3 would complain about (for precise issues)."""
    contained = _contained(resource)
    if not contained:
        return []
    refs: set[str] = set()
    _collect_strings(resource, refs)
    if "#" in refs:
        return []
    return [i for i, c in enumerate(contained) if f"#{c.get('id')}" not in refs]


def _contained(focus: Any) -> list[dict]:
    contained = focus.get("contained") if isinstance(focus, dict) else None
    if not isinstance(contained, list):
        return []
    return [c for c in contained if isinstance(c, dict)]


def _collect_strings(node: Any, out: set[str]) -> None:
    """Every string starting with '#' anywhere in the resource (references, canonicals, uris)."""
    if isinstance(node, dict):
        for v in node.values():
            _collect_strings(v, out)
    elif isinstance(node, list):
        for v in node:
            _collect_strings(v, out)
    elif isinstance(node, str) and node.startswith("#"):
        out.add(node)


_DOM3 = (
    "contained.where((('#'+id in (%resource.descendants().reference | "
    "%resource.descendants().as(canonical) | %resource.descendants().as(uri) | "
    "%resource.descendants().as(url))) or descendants().where(reference = '#').exists() or "
    "descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = "
    "'#').exists()).not()).trace('unmatched', id).empty()"
)

#: dom-3 as the R4 package states it (`ofType` where the specification text has `as`); it is
#: evaluated by the engine, since `_dom3` was written for the other wording.
_DOM3_OF_TYPE = (
    "contained.where((('#'+id in (%resource.descendants().reference | "
    "%resource.descendants().ofType(canonical) | %resource.descendants().ofType(uri) | "
    "%resource.descendants().ofType(url))) or descendants().where(reference = '#').exists() "
    "or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical)"
    " = '#').exists()).not()).trace('unmatched', id).empty()"
)
#: Expressions of the form `contained.where(...)...empty()`: true whenever the focus has no
#: contained resources (`contained` is then empty, and so is everything filtered from it).
_ONLY_WITH_CONTAINED = frozenset({_DOM3_OF_TYPE})


def _when_contained(evaluate: Evaluator) -> Evaluator:
    """`evaluate`, answered without the engine when the focus has no `contained` at all."""

    def run(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
        if type(focus) is dict and "contained" not in focus and "_contained" not in focus:
            return True
        return evaluate(focus, scope, base)

    return run


def _ref1(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    """ref-1: a local reference (`#id`) points at a contained resource of the resource."""
    ref = focus.get("reference") if isinstance(focus, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#") or ref == "#":
        return True
    return any(isinstance(c, dict) and c.get("id") == ref[1:]
               for c in scope.root.get("contained") or ())


#: Invariants whose R4 expression contradicts their own description, as corrected later by
#: HL7 (the Java validator applies the same corrections).
ERRATA: dict[tuple[str, str], str] = {
    ("que-12", "enableWhen.count() > 2 implies enableBehavior.exists()"):
        "enableWhen.count() > 1 implies enableBehavior.exists()",
    # R4 tests for the System type; FHIRPath says a FHIR boolean is not one (the FHIRPath suite
    # checks exactly that), so the rule failed for every answerBoolean. R5 has `boolean`.
    ("que-7", "operator = 'exists' implies (answer is Boolean)"):
        "operator = 'exists' implies (answer is boolean)",
}

_REF1 = ("reference.startsWith('#').not() or (reference.substring(1).trace('url') in "
         "%rootResource.contained.id.trace('ids'))")

def _delegated(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    """Checked natively elsewhere (txt-1: the narrative's XHTML rules, see the validator)."""
    return True


def _txt2(focus: Any, scope: Scope, base: str | None = None) -> bool | None:
    """txt-2: the narrative has some non-whitespace content."""
    if not isinstance(focus, str):
        return None
    text = re.sub(r"<[^>]*>", "", focus)
    return bool(text.strip()) or "<img" in focus


_NATIVE: dict[tuple[str, str], Evaluator] = {
    ("txt-1", "htmlChecks()"): _delegated,
    ("txt-2", "htmlChecks()"): _txt2,
    ("ref-1", _REF1): _ref1,
    ("ele-1", "hasValue() or (children().count() > id.count())"): _ele1,
    ("ext-1", "extension.exists() != value.exists()"): _ext1,
    ("dom-2", "contained.contained.empty()"): _dom2,
    ("dom-3", _DOM3): _dom3,
    ("dom-4", "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()"): _dom4,
    ("dom-5", "contained.meta.security.empty()"): _dom5,
    ("dom-6", "text.`div`.exists()"): _dom6,
}

_NATIVE_BY_EXPRESSION: dict[str, Evaluator] = {expr: fn for (_, expr), fn in _NATIVE.items()}
