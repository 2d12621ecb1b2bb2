"""FHIR R4 type information and the nodes that wrap resource content during evaluation.

Type information comes from fhirpathpy's R4 model tables (element path -> type, choice
elements, content references, type hierarchy). Lookups are resolved once per (parent, name)
and cached, so navigating `name.given` costs two dictionary hits per node after warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from fhirpathpy.models import models

from ekd.fhirpath.values import UCUM, Date, DateTime, Quantity, Time

_RAW: dict[str, Any] = models["r4"]
PATH2TYPE: dict[str, str] = _RAW["path2Type"]
CHOICES: dict[str, list[str]] = _RAW["choiceTypePaths"]
ELSEWHERE: dict[str, str] = _RAW["pathsDefinedElsewhere"]
PARENTS: dict[str, str] = _RAW["type2Parent"]

PRIMITIVES = frozenset({
    "boolean", "integer", "decimal", "string", "code", "id", "uri", "url", "canonical", "oid",
    "uuid", "markdown", "base64Binary", "date", "dateTime", "instant", "time", "positiveInt",
    "unsignedInt", "xhtml",
})
QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count",
                            "SimpleQuantity", "MoneyQuantity"})
# The model lists choice elements both as `value` and expanded (`valueQuantity`); only the
# former is an element name in FHIRPath.
_EXPANDED = frozenset(base + suffix for base, suffixes in CHOICES.items() for suffix in suffixes)
# Element names per parent path; backbone elements are only known through their children.
_CHILD_NAMES: dict[str, set[str]] = {}
for _k in (*PATH2TYPE, *CHOICES, *ELSEWHERE):
    if _k in _EXPANDED:
        continue
    _parts = _k.split(".")
    for _i in range(1, len(_parts)):
        _CHILD_NAMES.setdefault(".".join(_parts[:_i]), set()).add(_parts[_i])
_PARENT_PATHS = frozenset(_CHILD_NAMES)
FHIR_TYPES = frozenset({*PARENTS, *PARENTS.values(), *PRIMITIVES, "Resource", "Element",
                        "BackboneElement"})


def is_resource_type(name: str) -> bool:
    while name:
        if name == "Resource":
            return True
        name = PARENTS.get(name, "")
    return False


def is_subtype(name: str, ancestor: str) -> bool:
    while name:
        if name == ancestor:
            return True
        name = PARENTS.get(name, "")
    return False


@dataclass(frozen=True, slots=True)
class Element:
    """How an element name maps onto JSON keys: (key, FHIR type, child path) per choice."""

    name: str
    keys: tuple[tuple[str, str, str | None], ...]


def _root_type(path: str) -> str:
    return path.split(".", 1)[0]


def _system_string_type(parent: str, name: str) -> str:
    # R4 defines Resource.id, Element.id and Extension.url as System.String with an
    # extension giving their FHIR type: id, string and uri respectively.
    if name == "id" and "." not in parent and is_resource_type(parent):
        return "id"
    if name == "url" and parent == "Extension":
        return "uri"
    return "string"


def _parent_of(path: str) -> str:
    if "." in path:
        return "BackboneElement" if is_resource_type(_root_type(path)) else "Element"
    return PARENTS.get(path, "")


def _typed(parent: str, name: str, full: str, type_name: str) -> tuple[str, str, str | None]:
    if type_name == "System.String":
        type_name = _system_string_type(parent, name)
    return (name, type_name, type_name)


@cache
def element(path: str, name: str) -> Element | None:
    """The element `name` of the type/backbone at `path` (inherited elements included)."""
    p = path
    while p:
        full = f"{p}.{name}"
        if full in CHOICES:
            keys = []
            for suffix in CHOICES[full]:
                t = PATH2TYPE.get(full + suffix) or (suffix[0].lower() + suffix[1:])
                keys.append((name + suffix, t, t))
            return Element(name, tuple(keys))
        if full in ELSEWHERE:
            return Element(name, ((name, _backbone_type(full), ELSEWHERE[full]),))
        t = PATH2TYPE.get(full) if full not in _EXPANDED else None
        if t is not None:
            key, type_name, child = _typed(p, name, full, t)
            return Element(name, ((key, type_name, child),))
        if full in _PARENT_PATHS:
            return Element(name, ((name, _backbone_type(full), full),))
        p = _parent_of(p)
    return None


def _backbone_type(full: str) -> str:
    return "BackboneElement" if is_resource_type(_root_type(full)) else "Element"


@cache
def choice_misuse(path: str, name: str) -> str | None:
    """If `name` is a choice element with its type suffix (valueQuantity), the proper name."""
    p = path
    while p:
        for i in range(1, len(name)):
            base = name[:i]
            suffixes = CHOICES.get(f"{p}.{base}")
            if suffixes and name[i:] in suffixes:
                return base
        p = _parent_of(p)
    return None


@cache
def key_map(path: str) -> dict[str, tuple[str, str, str | None]]:
    """JSON key -> (element name, FHIR type, child path) for all elements of `path`."""
    out: dict[str, tuple[str, str, str | None]] = {}
    seen: set[str] = set()
    p = path
    prefixes: list[str] = []
    while p:
        prefixes.append(p)
        p = _parent_of(p)
    for prefix in prefixes:
        for name in sorted(_CHILD_NAMES.get(prefix, ())):
            if name in seen:
                continue
            seen.add(name)
            el = element(path, name)
            if el is None:
                continue
            for key, type_name, child in el.keys:
                out.setdefault(key, (name, type_name, child))
    return out


_UNSET: Any = object()


class Node:
    """An element or resource from the input, with its FHIR type.

    `data` is the JSON value (a dict for complex types and resources, the scalar for a
    primitive, None for a primitive that only has extensions); `ext` is the primitive's
    companion `_name` object. `path` is where the children are defined in the model: the type
    name, or the element path for backbone elements; None when the type is unknown.
    """

    __slots__ = ("_value", "data", "ext", "path", "type")

    def __init__(self, data: Any, type_name: str, path: str | None, ext: Any = None) -> None:
        self.data = data
        self.type = type_name
        self.path = path
        self.ext = ext
        self._value = _UNSET

    def __repr__(self) -> str:
        return f"Node({self.type}, {self.data!r})"

    @property
    def value(self) -> Any:
        """The System value of a primitive (None if it has none); the node itself otherwise."""
        v = self._value
        if v is _UNSET:
            v = self._value = _system_value(self)
        return v


def _decimal(v: Any) -> Decimal | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, str):
        try:
            return Decimal(v)
        except ArithmeticError:
            return None
    return None


#: Primitive types whose System value is not simply their JSON string.
_NOT_PLAIN_STRINGS = frozenset({"boolean", "integer", "positiveInt", "unsignedInt", "decimal",
                                "date", "dateTime", "instant", "time"})


def _system_value(node: Node) -> Any:
    d = node.data
    t = node.type
    if type(d) is str and t not in _NOT_PLAIN_STRINGS:  # code, uri, string...: the usual case
        return d
    if d is None:
        return None
    if isinstance(d, dict):
        return node
    if t == "boolean":
        return d if isinstance(d, bool) else None
    if t in ("integer", "positiveInt", "unsignedInt"):
        return d if isinstance(d, int) and not isinstance(d, bool) else None
    if t == "decimal":
        return _decimal(d)
    if t == "date":
        return _parse_date(d) if isinstance(d, str) else None
    if t in ("dateTime", "instant"):
        return _parse_datetime(d) if isinstance(d, str) else None
    if t == "time":
        return _parse_time(d) if isinstance(d, str) else None
    if isinstance(d, str | bool | int):
        return d
    if isinstance(d, float):
        return Decimal(repr(d))
    return d


# A resource's dates are read again by every invariant that looks at them (per-1 reads a
# period's start and end twice each, on every Period); temporals are immutable values, so the
# parsed ones can be shared.
@lru_cache(maxsize=4096)
def _parse_date(text: str) -> Date | None:
    return Date.parse(text)


@lru_cache(maxsize=4096)
def _parse_datetime(text: str) -> DateTime | None:
    if len(text) <= 10:  # a dateTime of date precision is still a DateTime
        parsed = Date.parse(text)
        return parsed.to_datetime() if parsed else None
    return DateTime.parse(text)


@lru_cache(maxsize=4096)
def _parse_time(text: str) -> Time | None:
    return Time.parse(text)


def node_quantity(node: Node) -> Quantity | None:
    """A FHIR Quantity (or Age, Duration, ...) as a System Quantity, when it has a value."""
    d = node.data
    if not isinstance(d, dict):
        return None
    value = _decimal(d.get("value"))
    if value is None:
        return None
    code = d.get("code")
    if d.get("system") == UCUM and code:
        return Quantity(value, code)
    unit = code or d.get("unit")
    return Quantity(value, unit or "1")


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float | Decimal):
        return "decimal"
    if isinstance(v, str):
        return "string"
    return "Element"


def make_node(v: Any, ext: Any, type_name: str, child: str | None) -> Node:
    if isinstance(v, dict):
        rt = v.get("resourceType")
        if isinstance(rt, str):
            return Node(v, rt, rt)
    return Node(v, type_name, child, ext)


def resource_node(data: Any, base: str | None = None) -> Node:
    """The node for an input value: a resource, or an element of type/path `base`."""
    if isinstance(data, dict) and isinstance(data.get("resourceType"), str) and base is None:
        rt = data["resourceType"]
        return Node(data, rt, rt)
    if base is not None:
        if "." in base:
            typed = _element_base(base)
            if typed is not None:
                return make_node(data, None, *typed)
            return Node(data, "BackboneElement", base)
        return make_node(data, None, base, base)
    if isinstance(data, dict):
        return Node(data, "Element", None)
    return Node(data, _json_type(data), None)


@cache
def _element_base(base: str) -> tuple[str, str | None] | None:
    """(FHIR type, child path) of the element at path `base` when it has a single type."""
    head, name = base.rsplit(".", 1)
    el = element(head, name)
    if el is not None and len(el.keys) == 1:
        _key, type_name, child = el.keys[0]
        return type_name, child
    return None


_RESOURCE_TYPES = frozenset({"Resource", *(t for t in PARENTS if is_resource_type(t))})


def _append(out: list[Node], v: Any, e: Any, type_name: str, child: str | None) -> None:
    if e is None and type_name not in _RESOURCE_TYPES:  # the common case, kept cheap
        if type(v) is list:
            out.extend([Node(x, type_name, child) for x in v if x is not None])
        else:
            out.append(Node(v, type_name, child))
        return
    if isinstance(v, list) or isinstance(e, list):
        vs = v if isinstance(v, list) else []
        es = e if isinstance(e, list) else []
        for i in range(max(len(vs), len(es))):
            vi = vs[i] if i < len(vs) else None
            ei = es[i] if i < len(es) else None
            if vi is not None or ei is not None:
                out.append(make_node(vi, ei, type_name, child))
    else:
        out.append(make_node(v, e, type_name, child))


#: How to read element `name` of the type/backbone at a path: (JSON key, "_" + key, FHIR type,
#: child path, whether `_append`'s cheap case applies to the type), per choice type.
Plan = tuple[tuple[str, str, str, "str | None", bool], ...]


@cache
def member_plan(path: str, name: str) -> Plan | None:
    """`element(path, name)` prepared for `member`; None when the model has no such element."""
    el = element(path, name)
    if el is None:
        return None
    return tuple((key, "_" + key, type_name, child, type_name not in _RESOURCE_TYPES)
                 for key, type_name, child in el.keys)


#: A plan with more entries than this is a choice worth indexing (see `_Choice`).
_FEW = 2


class _Choice:
    """A choice element's plan (`value[x]`: a dozen types, so two dozen keys) indexed by JSON
    key, so `member` finds the one present without trying every type's key in turn."""

    __slots__ = ("by_key", "keys", "plan")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.keys = frozenset(k for entry in plan for k in entry[:2])
        self.by_key = {k: entry for entry in plan for k in entry[:2]}


@cache
def _member_plan(path: str, name: str) -> Plan | _Choice | None:
    plan = member_plan(path, name)
    if plan is None or len(plan) <= _FEW:
        return plan
    choice = _Choice(plan)
    # Each key must lead to one entry only, or a lone present key could stand for several.
    return choice if len(choice.by_key) == 2 * len(plan) else plan


def member(node: Node, name: str, out: list[Node], plans: dict | None = None) -> bool:
    """Append the children called `name` to `out`; False when the model has no such element.

    `plans`, if given, is the caller's cache of the plan by path for this `name` (a plain
    dictionary hit instead of a cached call with a tuple key)."""
    data = node.data
    if not isinstance(data, dict):
        ext = node.ext
        if name == "extension" or name == "id":
            if isinstance(ext, dict) and name in ext:
                _append(out, ext[name], None, "Extension" if name == "extension" else "string",
                        "Extension" if name == "extension" else "string")
            return True
        return node.path is None or node.type not in PRIMITIVES
    path = node.path
    plan: Any
    if path is None:
        plan = None
    elif plans is None:
        plan = _member_plan(path, name)
    else:
        plan = plans.get(path, _UNSET)
        if plan is _UNSET:
            plan = plans[path] = _member_plan(path, name)
    if plan is None:
        v = data.get(name)
        e = data.get("_" + name)
        if v is not None or e is not None:
            if isinstance(v, list):
                for x in v:
                    out.append(make_node(x, None, _json_type(x), None))
            elif v is not None or e is not None:
                out.append(make_node(v, e, _json_type(v), None))
        return path is None
    if type(plan) is _Choice:
        present = plan.keys.intersection(data)
        if not present:
            return True
        # One key present: only its type's entry can yield anything (every other entry
        # would read None twice); with more, every entry in definition order, as usual.
        plan = (plan.by_key[next(iter(present))],) if len(present) == 1 else plan.plan
    for key, ukey, type_name, child, plain in plan:
        v = data.get(key)
        e = data.get(ukey)
        if e is None and plain:  # `_append`'s common case, inlined
            if v is None:
                continue
            if type(v) is list:
                out.extend([Node(x, type_name, child) for x in v if x is not None])
            else:
                out.append(Node(v, type_name, child))
            continue
        if v is None and e is None:
            continue
        _append(out, v, e, type_name, child)
    return True


def children(node: Node, out: list[Node]) -> None:
    data = node.data
    if not isinstance(data, dict):
        ext = node.ext
        if isinstance(ext, dict):
            for name in ("id", "extension"):
                if name in ext:
                    member(node, name, out)
        return
    kmap = key_map(node.path) if node.path is not None else {}
    for key, v in data.items():
        if key == "resourceType":
            continue
        if key[0] == "_":
            if key[1:] in data:
                continue
            key = key[1:]
            v = None
        info = kmap.get(key)
        e = data.get("_" + key)
        if info is None:
            if v is None:
                continue
            if isinstance(v, list):
                for x in v:
                    out.append(make_node(x, None, _json_type(x), None))
            else:
                out.append(make_node(v, e, _json_type(v), None))
            continue
        _name, type_name, child = info
        _append(out, v, e, type_name, child)
