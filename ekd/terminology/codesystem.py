"""One CodeSystem resource, indexed for lookups, hierarchy walks and compose filters.

A CodeSystem is a tree written as nested `concept` elements, but R4 also allows (and the v3
code systems use) the `parent`/`child` concept properties for extra parents, so the hierarchy
here is a graph built from both. Indexes are built once per code system and shared by every
value set that draws on it (the service caches them until the registry changes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

#: Concept property codes that mean "this concept sits under that one" (R4 concept-properties,
#: plus `subsumedBy`, which R5 defines for the same purpose and some R4 content already uses).
PARENT_PROPERTIES = frozenset({"parent", "subsumedBy"})
CHILD_PROPERTIES = frozenset({"child"})
#: `status` values that make a concept inactive (`deprecated` concepts are still active).
INACTIVE_STATUSES = frozenset({"retired", "inactive"})
#: Filter ops that walk the hierarchy rather than compare property values.
HIERARCHY_OPS = frozenset({"is-a", "descendent-of", "is-not-a", "generalizes"})
#: Properties every concept has, whether or not the code system declares them.
INTRINSIC_PROPERTIES = frozenset({"code", "concept", "display", "parent", "child", "inactive"})


@dataclass(slots=True)
class Concept:
    code: str
    display: str | None = None
    definition: str | None = None
    designations: list[dict] = field(default_factory=list)
    #: The concept's own `property` entries, as written.
    properties: list[dict] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    abstract: bool = False
    inactive: bool = False


class UnsupportedFilter(Exception):
    """A compose filter this server cannot evaluate; membership is then left undecided."""


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def property_value(prop: dict) -> str | None:
    """A concept property's value as text, so filters compare one representation."""
    for key, value in prop.items():
        if not key.startswith("value"):
            continue
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):  # valueCoding
            code = value.get("code")
            return code if isinstance(code, str) else None
        return str(value)
    return None


class CodeSystemIndex:
    """Read-only view of a CodeSystem; safe to share between threads once built."""

    def __init__(self, resource: dict) -> None:
        self.resource = resource
        self.url: str = resource.get("url") or ""
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("name") or resource.get("title") or self.url
        #: complete | fragment | example | not-present | supplement (absent counts as complete,
        #: which is what R4 content without the element means in practice).
        self.content: str = resource.get("content") or "complete"
        #: R4 leaves case sensitivity unspecified when the element is absent; we then compare
        #: exactly, because the `code` datatype itself is case-sensitive.
        self.case_sensitive: bool = resource.get("caseSensitive") is not False
        self.concepts: dict[str, Concept] = {}
        self.declared_properties: dict[str, str | None] = {
            p["code"]: p.get("type")
            for p in _list(resource.get("property"))
            if isinstance(p, dict) and isinstance(p.get("code"), str)
        }
        self._used_properties: set[str] = set()
        self._defined: set[str] = set()
        self._walk(_list(resource.get("concept")), None)
        self._drop_undefined()
        self._folded: dict[str, str] | None = None
        if not self.case_sensitive:
            self._folded = {}
            for code in self.concepts:
                self._folded.setdefault(code.casefold(), code)

    @property
    def complete(self) -> bool:
        return self.content == "complete"

    # -- building ------------------------------------------------------------------------------

    def _walk(self, concepts: list, parent: str | None) -> None:
        for raw in concepts:
            if not isinstance(raw, dict) or not isinstance(raw.get("code"), str):
                continue
            code = raw["code"]
            self._defined.add(code)
            concept = self.concepts.get(code)
            if concept is None:
                concept = self.concepts[code] = Concept(code)
            # A code may be written more than once (polyhierarchy): the first display wins,
            # properties and designations accumulate.
            if concept.display is None and isinstance(raw.get("display"), str):
                concept.display = raw["display"]
            if concept.definition is None and isinstance(raw.get("definition"), str):
                concept.definition = raw["definition"]
            concept.designations.extend(
                d for d in _list(raw.get("designation")) if isinstance(d, dict)
            )
            if parent is not None:
                self._link(parent, code)
            for prop in _list(raw.get("property")):
                if not isinstance(prop, dict) or not isinstance(prop.get("code"), str):
                    continue
                concept.properties.append(prop)
                pcode = prop["code"]
                self._used_properties.add(pcode)
                value = property_value(prop)
                if value is None:
                    continue
                if pcode in PARENT_PROPERTIES:
                    self._link(value, code)
                elif pcode in CHILD_PROPERTIES:
                    self._link(code, value)
                elif pcode in ("notSelectable", "abstract") and value == "true":
                    concept.abstract = True
                elif (pcode == "status" and value in INACTIVE_STATUSES) or (
                    pcode == "inactive" and value == "true"
                ):
                    concept.inactive = True
            self._walk(_list(raw.get("concept")), code)

    def _drop_undefined(self) -> None:
        """Codes only named by a `parent`/`child` property are not concepts of this system."""
        phantoms = set(self.concepts) - self._defined
        if not phantoms:
            return
        for code in phantoms:
            del self.concepts[code]
        for concept in self.concepts.values():
            concept.parents = [p for p in concept.parents if p not in phantoms]
            concept.children = [c for c in concept.children if c not in phantoms]

    def _link(self, parent: str, child: str) -> None:
        p = self.concepts.get(parent)
        if p is None:  # a parent named before it is defined: filled in when it is reached
            p = self.concepts[parent] = Concept(parent)
        c = self.concepts.get(child)
        if c is None:
            c = self.concepts[child] = Concept(child)
        if child not in p.children:
            p.children.append(child)
        if parent not in c.parents:
            c.parents.append(parent)

    # -- lookup --------------------------------------------------------------------------------

    def find(self, code: str) -> Concept | None:
        """The concept, matching case-insensitively only where the code system allows it."""
        found = self.concepts.get(code)
        if found is None and self._folded is not None:
            canonical = self._folded.get(code.casefold())
            found = self.concepts.get(canonical) if canonical is not None else None
        return found

    def normalise(self, code: str) -> str:
        """The form codes are compared in: folded for case-insensitive code systems."""
        return code if self.case_sensitive else code.casefold()

    def descendants(self, code: str) -> list[str]:
        """Transitive children (not the code itself)."""
        return self._closure(code, lambda concept: reversed(concept.children))

    def ancestors(self, code: str) -> list[str]:
        return self._closure(code, lambda concept: concept.parents)

    def _closure(self, code: str, edges: Callable[[Concept], Iterable[str]]) -> list[str]:
        """Codes reachable from `code` along `edges`; cycle-safe because content is untrusted."""
        seen: set[str] = {code}
        out: list[str] = []
        start = self.concepts.get(code)
        stack = list(edges(start)) if start is not None else []
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            out.append(current)
            node = self.concepts.get(current)
            if node is not None:
                stack.extend(edges(node))
        return out

    # -- filters -------------------------------------------------------------------------------

    def select(self, prop: str, op: str, value: str) -> set[str]:
        """The codes a compose filter selects; raises UnsupportedFilter when we cannot tell."""
        if op in HIERARCHY_OPS:
            if prop not in ("concept", "code"):
                raise UnsupportedFilter(f"'{op}' works on the property 'concept', not '{prop}'")
            root = self.find(value)
            if root is None:
                # R4: a filter naming an unknown concept selects nothing.
                return set(self.concepts) if op == "is-not-a" else set()
            if op == "is-a":
                return {root.code, *self.descendants(root.code)}
            if op == "descendent-of":
                return set(self.descendants(root.code))
            if op == "generalizes":
                return {root.code, *self.ancestors(root.code)}
            return set(self.concepts) - {root.code, *self.descendants(root.code)}
        if prop not in INTRINSIC_PROPERTIES and prop not in self.declared_properties and (
            prop not in self._used_properties
        ):
            raise UnsupportedFilter(f"code system {self.url} has no property '{prop}'")
        test = _value_test(op, value)
        return {code for code, c in self.concepts.items() if test(list(self._values(c, prop)))}

    def _values(self, concept: Concept, prop: str) -> Iterator[str]:
        if prop in ("code", "concept"):
            yield concept.code
            return
        if prop == "display":
            if concept.display is not None:
                yield concept.display
            return
        if prop == "parent":
            yield from concept.parents
        elif prop == "child":
            yield from concept.children
        explicit = False
        for p in concept.properties:
            if p.get("code") == prop:
                value = property_value(p)
                if value is not None and prop not in ("parent", "child"):
                    explicit = True
                    yield value
        if prop == "inactive" and not explicit:
            yield "true" if concept.inactive else "false"


MAX_REGEX_LENGTH = 256
#: A quantified group that itself contains a quantifier, e.g. (a+)+ or (\w*)*: the classic
#: exponential-backtracking shape.
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")


def _value_test(op: str, value: str) -> Callable[[list[str]], bool]:
    if op == "=":
        return lambda values: value in values
    if op in ("in", "not-in"):
        wanted = {v.strip() for v in value.split(",") if v.strip()}
        if op == "in":
            return lambda values: any(v in wanted for v in values)
        return lambda values: not any(v in wanted for v in values)
    if op == "regex":
        # Python's re has no time limit: a client-supplied ValueSet could stall a worker with a
        # catastrophically backtracking pattern. Refuse long patterns and nested quantifiers.
        if len(value) > MAX_REGEX_LENGTH or _NESTED_QUANTIFIER.search(value):
            raise UnsupportedFilter("the regex is too long or has nested quantifiers")
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise UnsupportedFilter(f"the regex '{value}' is invalid: {exc}") from None
        return lambda values: any(pattern.fullmatch(v) for v in values)
    if op == "exists":
        if value not in ("true", "false"):
            raise UnsupportedFilter(f"'exists' needs the value true or false, not '{value}'")
        want = value == "true"
        return lambda values: bool(values) == want
    raise UnsupportedFilter(f"the filter operator '{op}' is not supported")

