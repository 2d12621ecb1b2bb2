"""Search parameters in force: R4's own, the JGZ ones and those stored at run time.

http://hl7.org/fhir/R4/searchparameter.html. A parameter is known by (resource type, code).
For indexing, each parameter's FHIRPath expression is cut down to the branches that can apply
to one resource type (R4's shared parameters list a dozen types in one union) and compiled
once. `where(resolve() is Patient)` cannot be evaluated without a database, so such a
branch is compiled without it and the target type is checked on the reference itself.
Branches of the simple shapes most parameters have also get a plain-Python walker
(`ekd.search.walk`), and each extractor says which resource keys it needs to index anything.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ekd.errors import InvalidRequest
from ekd.fhir.resource_types import is_resource_type
from ekd.fhirpath import Expression, FhirPathError
from ekd.fhirpath import compile as compile_fhirpath
from ekd.search import builtin
from ekd.search.walk import Probe, Walker, compile_walker, merge_probes

TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
)
#: Raise when `ekd.search.index` changes what rows it writes for the same parameters: it is
#: part of the signature, so `ekd serve` asks for and `ekd reindex` does a rebuild.
INDEX_FORMAT = 2
#: Answered from the `resource` table itself, never indexed.
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})
_RESOLVE_IS = re.compile(r"^(?P<path>.+)\.where\(resolve\(\) is (?P<type>[A-Za-z]+)\)$")
_PLAIN_PATH = re.compile(r"^[A-Z][A-Za-z]+(\.[a-z][A-Za-z]*)+$")
_LEADING_TYPE = re.compile(r"^\(*\s*([A-Z][A-Za-z]+)\b")


@dataclass(frozen=True, slots=True)
class Component:
    definition: str
    expression: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    url: str
    code: str
    type: str
    base: tuple[str, ...]
    expression: str | None
    target: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    builtin: bool = False

    @classmethod
    def from_resource(cls, sp: dict, *, is_builtin: bool = False) -> SearchParam:
        def need(name: str) -> object:
            value = sp.get(name)
            if not value:
                raise InvalidRequest(f"SearchParameter.{name} is required for searching",
                                     expression=f"SearchParameter.{name}")
            return value

        sp_type = str(need("type"))
        if sp_type not in TYPES:
            raise InvalidRequest(f"Unknown search parameter type '{sp_type}'",
                                 expression="SearchParameter.type")
        code = str(need("code"))
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", code):
            raise InvalidRequest(f"Search parameter code '{code}' is not a valid name",
                                 expression="SearchParameter.code")
        base = need("base")
        expression = sp.get("expression")
        if expression is not None:
            try:
                compile_fhirpath(expression)
            except FhirPathError as exc:
                raise InvalidRequest(str(exc), expression="SearchParameter.expression") from None
        return cls(
            url=str(need("url")),
            code=code,
            type=sp_type,
            base=tuple(base) if isinstance(base, list) else (str(base),),
            expression=expression,
            target=tuple(sp.get("target") or ()),
            components=tuple(Component(c["definition"], c["expression"])
                             for c in sp.get("component") or ()),
            builtin=is_builtin,
        )


@dataclass(frozen=True, slots=True)
class Extractor:
    """What indexing one parameter on one resource type evaluates."""

    param: SearchParam
    #: (expression, target type the reference must have or None)
    branches: tuple[tuple[Expression, str | None], ...]
    #: For composites: (component parameter type, expression) pairs.
    components: tuple[tuple[str, Expression], ...] = ()
    #: Per branch, then per component: the plain-Python walker of a simple expression (None:
    #: the engine evaluates it). See `ekd.search.walk`.
    walkers: tuple[Walker | None, ...] = ()
    component_walkers: tuple[Walker | None, ...] = ()
    #: What the resource must have for the parameter to index anything: one of the keys, and
    #: where a key maps to a set, one of those in its value (None: not known, always
    #: evaluate). See `ekd.search.walk.Walker.probe`.
    needs: Probe | None = None
    #: Per branch, what the indexer runs: (expression, target, walker, rows memo key). The
    #: walker is None where the engine evaluates; the key is the same for parameters whose
    #: rows for the branch are the same but for the parameter name.
    steps: tuple[tuple[Expression, str | None, Walker | None, str], ...] = ()


@dataclass
class _ForType:
    params: dict[str, SearchParam] = field(default_factory=dict)
    extractors: list[Extractor] | None = None


def split_union(expression: str) -> list[str]:
    """Top-level `|` branches of a FHIRPath expression (not those inside parentheses/strings)."""
    parts: list[str] = []
    depth = 0
    quote = False
    start = 0
    i = 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == "'":
                quote = False
        elif ch == "'":
            quote = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def branches_for(expression: str, rtype: str) -> list[str]:
    """The branches of `expression` that can select something on a `rtype` resource."""
    keep = []
    for branch in split_union(expression):
        m = _LEADING_TYPE.match(branch)
        if m and is_resource_type(m.group(1)) and m.group(1) != rtype:
            continue
        keep.append(branch)
    return keep


@functools.lru_cache(maxsize=4096)
def _walker(expression: str) -> Walker | None:
    return compile_walker(expression)


def _needed(param: SearchParam, rtype: str, walkers: tuple[Walker | None, ...],
            component_walkers: tuple[Walker | None, ...]) -> Probe | None:
    """What a `rtype` resource needs for `param` to index anything (see `Walker.probe`).

    A branch walking from the resource needs its first element (with its second, if that is
    a member); a composite branch that is the resource itself needs what its second
    component (or first) starts from, as a composite row takes a value of each."""
    probes: list[Probe] = []
    for walker in walkers:
        if walker is None:
            return None
        found = walker.probe(rtype, rtype)
        if found is None and param.type == "composite" and walker.is_root(rtype):
            for component in reversed(component_walkers[:2]):
                keys = component.root_keys(rtype, rtype) if component is not None else None
                if keys is not None:
                    found = dict.fromkeys(keys)
                    break
        if found is None:
            return None
        probes.append(found)
    return merge_probes(probes)


class SearchParameters:
    """The registry of search parameters; safe to read while another thread adds one."""

    def __init__(self, *, include_builtin: bool = True,
                 max_one: Callable[[str], bool] | None = None) -> None:
        #: Whether an element path (`Encounter.period`) holds at most one value (from the
        #: base StructureDefinitions); None: nothing is known to be single-valued.
        self.max_one = max_one
        self._single: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._by_url: dict[str, SearchParam] = {}
        self._types: dict[str, _ForType] = {}
        self.patient_compartment: dict[str, tuple[str, ...]] = {}
        if include_builtin:
            table = builtin.load()
            for sp in table["parameters"]:
                if sp["type"] == "special" or (not sp.get("expression") and sp["code"] not in (
                        RESOURCE_COLUMNS)):
                    continue
                self._put(SearchParam.from_resource(sp, is_builtin=True))
            self.patient_compartment = {
                t: tuple(p) for t, p in table["patient_compartment"].items()}

    # -- changes ----------------------------------------------------------------------------

    def add(self, resource: dict) -> SearchParam:
        param = SearchParam.from_resource(resource)
        with self._lock:
            self._put(param)
        return param

    def add_all(self, resources: Iterable[dict]) -> None:
        for resource in resources:
            if resource.get("resourceType") == "SearchParameter" and resource.get("status") != \
                    "retired":
                self.add(resource)

    def remove(self, url: str) -> None:
        with self._lock:
            old = self._by_url.pop(url, None)
            if old is None:
                return
            self._single.clear()
            for rtype in old.base:
                entry = self._types.get(rtype)
                if entry and entry.params.get(old.code) is old:
                    del entry.params[old.code]
                    entry.extractors = None

    def _put(self, param: SearchParam) -> None:
        self._single.clear()
        previous = self._by_url.get(param.url)
        if previous is not None:
            for rtype in previous.base:
                entry = self._types.get(rtype)
                if entry and entry.params.get(previous.code) is previous:
                    del entry.params[previous.code]
        self._by_url[param.url] = param
        for rtype in param.base:
            entry = self._types.setdefault(rtype, _ForType())
            entry.params[param.code] = param
            entry.extractors = None
        if {"Resource", "DomainResource"} & set(param.base):
            for entry in self._types.values():
                entry.extractors = None

    # -- lookups ----------------------------------------------------------------------------

    def by_url(self, url: str) -> SearchParam | None:
        return self._by_url.get(url)

    def get(self, rtype: str, code: str) -> SearchParam | None:
        for base in (rtype, "DomainResource", "Resource"):
            entry = self._types.get(base)
            if entry is not None and code in entry.params:
                if base == "DomainResource" and rtype in ("Bundle", "Binary", "Parameters"):
                    continue
                return entry.params[code]
        return None

    def for_type(self, rtype: str) -> dict[str, SearchParam]:
        out: dict[str, SearchParam] = {}
        bases = ["Resource"]
        if rtype not in ("Bundle", "Binary", "Parameters"):
            bases.append("DomainResource")
        bases.append(rtype)
        for base in bases:
            entry = self._types.get(base)
            if entry is not None:
                out.update(entry.params)
        return out

    def extractors(self, rtype: str) -> list[Extractor]:
        entry = self._types.setdefault(rtype, _ForType())
        extractors = entry.extractors
        if extractors is None:
            extractors = []
            for param in self.for_type(rtype).values():
                extractor = self._extractor(param, rtype)
                if extractor is not None:
                    extractors.append(extractor)
            entry.extractors = extractors
        return extractors

    def _extractor(self, param: SearchParam, rtype: str) -> Extractor | None:
        if param.code in RESOURCE_COLUMNS or not param.expression or param.type == "special":
            return None
        branches: list[tuple[Expression, str | None]] = []
        for branch in branches_for(param.expression, rtype):
            target = None
            m = _RESOLVE_IS.match(branch)
            if m:
                branch, target = m.group("path"), m.group("type")
            branches.append((compile_fhirpath(branch), target))
        if not branches:
            return None
        components: list[tuple[str, Expression]] = []
        for component in param.components:
            definition = self._by_url.get(component.definition)
            if definition is None:
                return None  # a composite whose parts are unknown cannot be indexed
            components.append((definition.type, compile_fhirpath(component.expression)))
        walkers = tuple(_walker(e.expression) for e, _ in branches)
        walkers = tuple(w if w is not None and w.fits(rtype) else None for w in walkers)
        component_walkers = tuple(_walker(e.expression) for _, e in components)
        kinds = "\0".join(f"{kind}\0{e.expression}" for kind, e in components)
        steps = tuple((e, target, walker, f"{param.type}\0{e.expression}\0{target}\0{kinds}")
                      for (e, target), walker in zip(branches, walkers, strict=True))
        return Extractor(param, tuple(branches), tuple(components), walkers, component_walkers,
                         _needed(param, rtype, walkers, component_walkers), steps)

    def single_valued(self, rtype: str, code: str) -> bool:
        """At most one element per resource: the one branch is a plain path of elements with
        max 1 (`Patient.birthDate`, `Encounter.period`). For a date that is at most one index
        row, so several criteria on the parameter can be checked on the same row, which makes
        `date=ge…&date=lt…` one index range instead of two half-open ones."""
        key = (rtype, code)
        known = self._single.get(key)
        if known is None:
            known = self._single[key] = self._single_valued(rtype, code)
        return known

    def _single_valued(self, rtype: str, code: str) -> bool:
        param = self.get(rtype, code)
        if self.max_one is None or param is None or not param.expression:
            return False
        branches = branches_for(param.expression, rtype)
        if len(branches) != 1 or not _PLAIN_PATH.match(branches[0]):
            return False
        parts = branches[0].split(".")
        return parts[0] == rtype and all(
            self.max_one(".".join(parts[: i + 1])) for i in range(1, len(parts)))

    def signature(self) -> str:
        """Changes whenever what indexing produces could change (for `ekd reindex`)."""
        digest = hashlib.sha256(f"index format {INDEX_FORMAT}\0".encode())
        for url in sorted(self._by_url):
            p = self._by_url[url]
            digest.update(f"{url}\0{p.code}\0{p.type}\0{p.base}\0{p.expression}\0".encode())
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._by_url)
