"""Plain-Python evaluation of the simple FHIRPath shapes search parameters use.

Most search parameter expressions are element paths (`Observation.subject`), maybe narrowed by
type (`(Observation.value as Quantity)`, `value.as(Quantity)`) or by a code
(`telecom.where(system='phone')`). For these, walking the JSON with precomputed element tables
gives the same items as the FHIRPath engine (`ekd.fhirpath`) at a fraction of its cost: no
`Node` objects, no collection per step, and a missing element ends the walk at one dict lookup.

Items are `(FHIR type, JSON value, model path)` triples, what `Node` carries (`type`, `data`,
`path`). Element tables (`ekd.fhirpath.model.element`) are resolved lazily per (path, name).
Whatever the walker is not sure to evaluate as the engine does raises `Fallback`, and the
caller evaluates the expression with the engine: an unknown element, a resource-typed element
(`contained`, `Bundle.entry.resource`), a primitive's `_name` companion, a union with more than
one item (the engine deduplicates by FHIRPath equality). `compile_walker` returns None for
expressions outside the supported shapes:

    expr   := term ('.' step)*  [' as ' Type]
    term   := '(' expr ')' | name
    step   := name | 'as(' Type ')' | 'ofType(' Type ')' | 'where(' name '=' 'literal' ')'
    union  := expr ('|' expr)*          (components only: branches are split beforehand)

A type filter right after a member is folded into it (`value as Quantity` looks up
`valueQuantity` only). `Walker.probe` tells, without walking, which keys (and keys of their
values) a resource needs for the walk to select anything: the indexer skips the parameters
whose needs a resource does not meet.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ekd.fhirpath import model

Item = tuple[str, object, str]
Op = Callable[[list[Item]], list[Item]]


class Fallback(Exception):
    """The walker cannot vouch for this input: evaluate with the FHIRPath engine."""


_UNSUPPORTED: Any = object()  # marker in the element tables: raise Fallback
#: Primitive types whose System value is the JSON string itself (for `where(x = 'lit')`).
_STRINGY = frozenset({"string", "uri", "url", "canonical", "code", "id", "oid", "uuid",
                      "markdown"})
_SYSTEM_TYPES = frozenset({"Boolean", "String", "Integer", "Decimal", "Date", "DateTime",
                           "Time", "Quantity"})
TypeTest = Callable[[str], bool]


def _keys(path: str, name: str, only: TypeTest | None = None
          ) -> tuple[tuple[str, str, str, str], ...]:
    """The (JSON key, `_key`, type, child path) alternatives of element `name` at `path`, or
    _UNSUPPORTED when the engine would do something the walker does not. `only`: keep the
    alternatives of the types it accepts (a member followed by `as`/`ofType`)."""
    el = model.element(path, name)
    if el is None:
        return _UNSUPPORTED
    out = []
    for key, type_name, child in el.keys:
        if child is None or model.is_resource_type(type_name):
            return _UNSUPPORTED
        if only is None or only(type_name):
            out.append((key, "_" + key, type_name, child))
    return tuple(out)


def _member(name: str, only: TypeTest | None = None) -> Op:
    table: dict[str, tuple[tuple[str, str, str, str], ...]] = {}

    def member(items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for _t, d, p in items:
            if not isinstance(d, dict):
                continue  # a primitive (or broken content) has no such child
            keys = table.get(p)
            if keys is None:
                keys = table[p] = _keys(p, name, only)
            if keys is _UNSUPPORTED:
                raise Fallback
            for key, ukey, type_name, child in keys:
                v = d.get(key)
                if ukey in d:
                    raise Fallback
                if v is None:
                    continue
                if type(v) is list:
                    out.extend([(type_name, x, child) for x in v if x is not None])
                else:
                    out.append((type_name, v, child))
        return out

    member.member_name = name  # type: ignore[attr-defined]
    member.only = only  # type: ignore[attr-defined]
    return member


def _head_keys(ops: list[Op], path: str) -> tuple[tuple[str, str, str, str], ...] | None:
    """`_keys` of the member the walk starts with (None: it starts otherwise, or unknown)."""
    name = getattr(ops[0], "member_name", None) if ops else None
    if name is None:
        return None
    keys = _keys(path, name, ops[0].only)  # type: ignore[attr-defined]
    return None if keys is _UNSUPPORTED else keys


def root_keys(ops: list[Op], path: str) -> frozenset[str] | None:
    """JSON keys of an element at `path` one of which must be present for `ops` to select
    anything from it (None: not known)."""
    keys = _head_keys(ops, path)
    if keys is None:
        return None
    # `_name` too: with only extensions, the engine has an item (without data) to go on from.
    return frozenset(k for key, ukey, _, _ in keys for k in (key, ukey))


def _type_matches(type_name: str, ns: str, name: str) -> bool:
    """`type_matches(node, ns, name, exact_primitives=True)` of the engine, for a FHIR node."""
    if ns != "FHIR":
        return False
    if type_name == name:
        return True
    if type_name in model.PRIMITIVES:
        return False
    return model.is_subtype(type_name, name)


def _resolve_type(name: str) -> tuple[str, str] | None:
    if name in model.FHIR_TYPES:
        return "FHIR", name
    if name in _SYSTEM_TYPES:
        return "System", name
    return None  # the engine raises: leave it to the engine


def _type_test(name: str) -> TypeTest | None:
    """Whether a node of a FHIR type passes `as name`/`ofType(name)` (None: not supported)."""
    resolved = _resolve_type(name)
    if resolved is None:
        return None
    ns, tname = resolved
    return lambda type_name: _type_matches(type_name, ns, tname)


def _of_type(test: TypeTest) -> Op:
    allowed: dict[str, bool] = {}

    def of_type(items: list[Item]) -> list[Item]:
        out = []
        for item in items:
            ok = allowed.get(item[0])
            if ok is None:
                ok = allowed[item[0]] = test(item[0])
            if ok:
                out.append(item)
        return out

    return of_type


def _filter(ops: list[Op], test: TypeTest) -> None:
    """Append a type filter to `ops`; fused into a member step right before it, the filter
    drops that element's alternatives of other types (same items, fewer keys to look at)."""
    last = ops[-1] if ops else None
    if last is not None and getattr(last, "member_name", None) and last.only is None:  # type: ignore[attr-defined]
        ops[-1] = _member(last.member_name, test)  # type: ignore[attr-defined]
    else:
        ops.append(_of_type(test))


def _where_equals(name: str, literal: str) -> Op:
    """`where(name = 'literal')` for a string-valued primitive `name`."""
    table: dict[str, str | None] = {}

    def where(items: list[Item]) -> list[Item]:
        out = []
        for item in items:
            d = item[1]
            if not isinstance(d, dict):
                continue  # no `name`: the comparison is empty, the criterion false
            key = table.get(item[2], "")
            if key == "":
                keys = _keys(item[2], name)
                key = table[item[2]] = (
                    keys[0][0] if keys is not _UNSUPPORTED and len(keys) == 1
                    and keys[0][2] in _STRINGY else None)
            if key is None or "_" + key in d:
                raise Fallback
            v = d.get(key)
            if type(v) is list:
                values = [x for x in v if x is not None]
                if len(values) == 1 and type(values[0]) is str and values[0] == literal:
                    out.append(item)
            elif type(v) is str and v == literal:
                out.append(item)
        return out

    return where


# -- parsing -------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'[^'\\]*')|(?P<name>[A-Za-z][A-Za-z0-9]*)|(?P<op>[().=|]))")


class _Unsupported(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _Unsupported
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, kind: str, text: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (text is not None and tok[1] != text):
            raise _Unsupported
        self.i += 1
        return tok[1]

    def at(self, kind: str, text: str | None = None) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == kind and (text is None or tok[1] == text)

    # Each parse returns (root type name or None, ops); a root type name only at the start.
    def union(self) -> list[tuple[str | None, list[Op]]]:
        parts = [self.expr(True)]
        while self.at("op", "|"):
            self.i += 1
            parts.append(self.expr(True))
        return parts

    def expr(self, at_root: bool) -> tuple[str | None, list[Op]]:
        root, ops = self.term(at_root)
        while self.at("op", "."):
            self.i += 1
            self.step(ops)
        if self.at("name", "as"):
            self.i += 1
            test = _type_test(self.take("name"))
            if test is None:
                raise _Unsupported
            _filter(ops, test)
        return root, ops

    def term(self, at_root: bool) -> tuple[str | None, list[Op]]:
        if self.at("op", "("):
            self.i += 1
            inner = self.expr(at_root)
            self.take("op", ")")
            return inner
        name = self.take("name")
        if name in ("as", "is", "where", "and", "or", "not", "true", "false"):
            raise _Unsupported
        if self.at("op", "("):
            raise _Unsupported  # a function at the root
        if at_root and name[:1].isupper():
            return name, []
        return None, [_member(name)]

    def step(self, ops: list[Op]) -> None:
        name = self.take("name")
        if not self.at("op", "("):
            ops.append(_member(name))
            return
        self.i += 1
        if name in ("as", "ofType"):
            test = _type_test(self.take("name"))
            self.take("op", ")")
            if test is None:
                raise _Unsupported
            _filter(ops, test)
        elif name == "where":
            field = self.take("name")
            if not field[:1].islower():
                raise _Unsupported  # a type name there tests the item's type
            self.take("op", "=")
            literal = self.take("str")[1:-1]
            self.take("op", ")")
            ops.append(_where_equals(field, literal))
        else:
            raise _Unsupported


class Walker:
    """A compiled simple expression: `walk(root)` gives the items the engine would give."""

    __slots__ = ("_subtype", "expression", "parts", "walk")

    def __init__(self, expression: str, parts: list[tuple[str | None, list[Op]]]) -> None:
        self.expression = expression
        self.parts = parts
        self._subtype: dict[tuple[str, str], bool] = {}
        self.walk: Callable[[Item], list[Item]] = (
            self._walk_one if len(parts) == 1 else self._walk_union)

    def __repr__(self) -> str:
        return f"Walker({self.expression!r})"

    def _is_subtype(self, type_name: str, root_type: str) -> bool:
        key = (type_name, root_type)
        known = self._subtype.get(key)
        if known is None:
            known = self._subtype[key] = model.is_subtype(type_name, root_type)
        return known

    def _walk_one(self, root: Item) -> list[Item]:
        """Items from `root` (a resource or element triple); raises Fallback."""
        root_type, ops = self.parts[0]
        if root_type is not None and not self._is_subtype(root[0], root_type):
            raise Fallback  # not how indexing uses it: let the engine decide
        items = [root]
        for op in ops:
            items = op(items)
            if not items:
                break
        return items

    def _walk_union(self, root: Item) -> list[Item]:
        out: list[Item] = []
        for root_type, ops in self.parts:
            if root_type is not None and not self._is_subtype(root[0], root_type):
                raise Fallback
            items = [root]
            for op in ops:
                items = op(items)
                if not items:
                    break
            out.extend(items)
        if len(out) > 1:
            raise Fallback  # a union deduplicates by FHIRPath equality
        return out

    def walk_or_none(self, root: Item) -> list[Item] | None:
        """`walk`, or None where the engine must evaluate."""
        try:
            return self.walk(root)
        except Fallback:
            return None

    def fits(self, root_type: str) -> bool:
        """Whether the walk from a `root_type` root passes the root type names of the
        expression (`Observation.code` from an Observation): then `walk_from` may be used."""
        return all(part_type is None or model.is_subtype(root_type, part_type)
                   for part_type, _ in self.parts)

    def walk_from(self, root: Item) -> list[Item]:
        """`walk` from a root the caller knows `fits`; raises Fallback."""
        parts = self.parts
        if len(parts) == 1:
            items = [root]
            for op in parts[0][1]:
                items = op(items)
                if not items:
                    break
            return items
        return self._walk_union(root)

    def probe(self, root_type: str, path: str) -> dict[str, frozenset[str] | None] | None:
        """What a `root_type` element at `path` needs for the walk to give an item with data:
        one of the keys, and if the key maps to a set, a value (or list item) with one of
        those keys (None: not known)."""
        out: dict[str, frozenset[str] | None] = {}
        for part_type, ops in self.parts:
            if part_type is not None and not model.is_subtype(root_type, part_type):
                return None
            keys = _head_keys(ops, path)
            if keys is None:
                return None
            second = ops[1] if len(ops) > 1 else None
            name2 = getattr(second, "member_name", None)
            for key, ukey, type_name, child in keys:
                sub: frozenset[str] | None = None
                if name2 is not None and type_name not in model.PRIMITIVES:
                    keys2 = _keys(child, name2, second.only)  # type: ignore[union-attr]
                    if keys2 is not _UNSUPPORTED:
                        sub = frozenset(k for k2, u2, _, _ in keys2 for k in (k2, u2))
                _merge(out, key, sub)
                _merge(out, ukey, None)  # a primitive's extensions: not looked into
        return out

    def is_root(self, root_type: str) -> bool:
        """The expression is the root itself (`Observation`), of type `root_type`."""
        if len(self.parts) != 1 or self.parts[0][1]:
            return False
        part_type = self.parts[0][0]
        return part_type is not None and model.is_subtype(root_type, part_type)

    def root_keys(self, root_type: str, path: str) -> frozenset[str] | None:
        """Keys of a `root_type` element at `path`, one of which the element must have for
        the walk to give an item with data (None: not known)."""
        out: set[str] = set()
        for part_type, ops in self.parts:
            if part_type is not None and not model.is_subtype(root_type, part_type):
                return None
            keys = root_keys(ops, path)
            if keys is None:
                return None
            out |= keys
        return frozenset(out)


Probe = dict[str, "frozenset[str] | None"]


def _merge(probe: Probe, key: str, sub: frozenset[str] | None) -> None:
    if key not in probe:
        probe[key] = sub
    else:
        known = probe[key]
        probe[key] = None if known is None or sub is None else known | sub


def merge_probes(probes: list[Probe]) -> Probe:
    out: Probe = {}
    for probe in probes:
        for key, sub in probe.items():
            _merge(out, key, sub)
    return out


def passes(probe: Probe, content: dict) -> bool:
    """Whether `content` has what `probe` asks for (see `Walker.probe`)."""
    for key, sub in probe.items():
        v = content.get(key)
        if v is None:
            continue
        if sub is None:
            return True
        if isinstance(v, dict):
            for k in sub:
                if k in v:
                    return True
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, dict):
                    for k in sub:
                        if k in x:
                            return True
    return False


def compile_walker(expression: str) -> Walker | None:
    """The walker for `expression`, or None when it is not one of the simple shapes."""
    try:
        parser = _Parser(expression)
        parts = parser.union()
        if parser.peek() is not None:
            return None
    except _Unsupported:
        return None
    return Walker(expression, parts)
