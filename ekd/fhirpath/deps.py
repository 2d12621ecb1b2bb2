"""Which properties of its focus an expression can read, for callers that remember outcomes.

An invariant such as `code.coding.where(system = 'x').code.all($this in (...))` reads the
focus's `code` and nothing else: two foci with equal `code` give the same outcome, whatever
else they hold. `focus_members` proves that from the syntax tree, conservatively: it gives up
(None) on anything that could see more than the named members of the focus (`$this` or a
function applied to the focus itself, `%resource` and other variables, a type name at the root)
or whose outcome depends on more than the data (`now()`, `resolve()`, `memberOf()`, `trace()`,
arithmetic under the thread's decimal context). Member names are prefixes: `value` stands for
`valueQuantity`, `_valueString` and every other key a choice element may take.
"""

from __future__ import annotations

from ekd.fhirpath.parser import Ast, FhirPathSyntaxError, parse

#: Functions whose outcome depends only on their input and arguments.
PURE_FUNCTIONS = frozenset({
    "empty", "exists", "all", "where", "select", "repeat", "count", "not", "first", "last",
    "tail", "skip", "take", "single", "distinct", "isDistinct", "allTrue", "anyTrue",
    "allFalse", "anyFalse", "subsetOf", "supersetOf", "intersect", "exclude", "union",
    "combine", "iif", "ofType", "as", "is", "type", "hasValue", "getValue", "extension",
    "children", "descendants", "matches", "matchesFull", "startsWith", "endsWith", "contains",
    "length", "substring", "upper", "lower", "replace", "replaceMatches", "indexOf",
    "lastIndexOf", "split", "join", "trim", "toChars", "toString", "toInteger", "toBoolean",
    "toDecimal", "toDate", "toDateTime", "toTime", "convertsToBoolean", "convertsToDate",
    "convertsToDateTime", "convertsToDecimal", "convertsToInteger", "convertsToString",
    "convertsToTime", "encode", "decode", "escape", "unescape",
})
#: Functions that evaluate their argument once per input item, with that item as focus.
PER_ITEM = frozenset({"exists", "all", "where", "select", "repeat"})
#: Functions whose argument is a type name, not an expression.
TYPE_ARGUMENT = frozenset({"ofType", "as", "is"})
#: Environment constants with a fixed value (`ekd.fhirpath.engine.STANDARD_CONSTANTS`).
FIXED_CONSTANTS = frozenset({"ucum", "sct", "loinc", "us-zip"})
#: Operators that compute with Decimals (the thread's context) are left out.
ARITHMETIC = frozenset({"+", "-", "*", "/", "div", "mod"})


class _GiveUp(Exception):
    pass


def focus_members(expression: str, resource_is_focus: bool = False
                  ) -> tuple[str, ...] | None:
    """The member names the expression reads from its focus, sorted; None when it may read
    more than those (or its outcome may depend on more than its focus).

    `resource_is_focus`: for a caller that only asks when `%resource` is the focus itself (an
    invariant on a resource's root): then `%resource.code` reads the focus's `code`."""
    try:
        tree = parse(expression)
    except FhirPathSyntaxError:
        return None
    names: set[str] = set()
    try:
        _visit(tree, True, names, resource_is_focus)
    except _GiveUp:
        return None
    return tuple(sorted(names))


def _visit(node: Ast, at_root: bool, names: set[str], resource: bool = False) -> None:
    """`at_root`: whether the focus ($this) where `node` is evaluated is the expression's
    input itself (it is not inside a per-item argument such as a `where` criterion);
    `resource`: whether `%resource` is that input (see `focus_members`)."""
    kind = node.kind
    if kind in ("literal", "empty"):
        return
    if kind == "paren":
        _visit(node.children[0], at_root, names, resource)
    elif kind == "constant":
        name = str(node.value)
        if name not in FIXED_CONSTANTS and not name.startswith(("vs-", "ext-")):
            raise _GiveUp
    elif kind == "special":
        if node.value == "this" and at_root:
            raise _GiveUp
    elif kind == "member":
        if at_root:
            name = str(node.value)
            if not name or name[:1].isupper() or name.startswith("_"):
                raise _GiveUp  # a type name is the focus itself
            names.add(name)
    elif kind == "function":
        if at_root:
            raise _GiveUp  # applied to the focus itself
        _function(node, False, names, resource)
    elif kind == "chain":
        target, step = node.children
        if resource and target.kind == "constant" and target.value == "resource":
            # `%resource.name`: a member of the focus, wherever it is written.
            if step.kind != "member" or not str(step.value) or str(step.value)[:1] == "_":
                raise _GiveUp
            names.add(str(step.value))
            return
        _visit(target, at_root, names, resource)
        if step.kind == "member":
            return
        if step.kind == "function":
            _function(step, at_root, names, resource)
        elif step.kind == "special":
            _visit(step, at_root, names, resource)
        else:
            raise _GiveUp
    elif kind == "index":
        for child in node.children:
            _visit(child, at_root, names, resource)
    elif kind == "binary":
        if node.value in ARITHMETIC:  # (unary minus too: it rounds to the context)
            raise _GiveUp
        for child in node.children:
            _visit(child, at_root, names, resource)
    elif kind == "type_op":
        _visit(node.children[0], at_root, names, resource)
    else:
        raise _GiveUp


def _function(node: Ast, at_root: bool, names: set[str], resource: bool) -> None:
    """A function invoked on some input; its arguments are evaluated against the current
    focus (`at_root`), or per input item."""
    name = str(node.value)
    if name not in PURE_FUNCTIONS:
        raise _GiveUp
    if name in TYPE_ARGUMENT:
        return
    for arg in node.children:
        _visit(arg, at_root and name not in PER_ITEM, names, resource)
