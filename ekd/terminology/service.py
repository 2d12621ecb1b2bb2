"""Terminology service: ValueSet expansion and membership, CodeSystem lookup.

Used by the validator (bindings, on every write) and by the operations ValueSet/$expand,
ValueSet/$validate-code and CodeSystem/$lookup. Everything is answered from the registry: the
server does not call out to an external terminology server, so codes from systems it does not
hold (LOINC, SNOMED CT, UCUM, ...) are decided only where a value set enumerates them; anywhere
else the answer is "not checked" (`CodeCheck.valid is None`), never a guess.

Compiled value sets and indexed code systems are cached (keyed by the canonical asked for) and
dropped whenever the registry adds or removes a ValueSet or CodeSystem.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TypeVar

from ekd.definitions.registry import Registry, split_canonical
from ekd.errors import InvalidRequest, NotFound, Unprocessable
from ekd.terminology.codesystem import CodeSystemIndex, Concept
from ekd.terminology.valueset import Compiler, Entry, Members

#: Largest number of codes one $expand answer (or `expand` call) returns; beyond it, page.
DEFAULT_MAX_EXPANSION = 10_000

K = TypeVar("K")
V = TypeVar("V")


class ExpansionNotPossible(Unprocessable):
    """The value set's content is not known in full here (e.g. it includes SNOMED CT by is-a)."""

    status, code = 422, "not-supported"


class ExpansionTooCostly(Unprocessable):
    status, code = 422, "too-costly"


@dataclass(frozen=True, slots=True)
class CodeCheck:
    #: True: in the value set; False: not in it; None: not checked (e.g. LOINC/SNOMED by filter,
    #: or an unknown value set) - the caller must not treat None as an error.
    valid: bool | None
    message: str = ""
    #: The display the code system gives the code, when known (for display mismatch warnings).
    display: str | None = None
    #: The system the code was found in, when the caller gave none (a bare `code` element).
    system: str | None = None


@dataclass(frozen=True, slots=True)
class Expansion:
    valueset_url: str
    total: int
    #: (system, version, code, display) in expansion order.
    contains: list[tuple[str, str | None, str, str | None]] = field(default_factory=list)
    valueset_version: str | None = None
    offset: int = 0
    #: The same codes as `contains`, with their abstract/inactive flags.
    entries: list[Entry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompiledValueSet:
    url: str
    version: str | None
    members: Members
    systems: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.url or "(the value set given)"


class TerminologyService:
    def __init__(self, registry: Registry, *, max_expansion: int = DEFAULT_MAX_EXPANSION) -> None:
        self.registry = registry
        self.max_expansion = max_expansion
        self._lock = threading.Lock()
        #: Bumped on every registry change, so a compile that raced a change is not cached.
        self._generation = 0
        self._valuesets: dict[str, CompiledValueSet] = {}
        self._codesystems: dict[tuple[str, str | None], CodeSystemIndex] = {}
        self._implicit: dict[str, str] | None = None
        registry.subscribe(self._changed)

    # -- cache ---------------------------------------------------------------------------------

    def _changed(self, resource: dict) -> None:
        if resource.get("resourceType") not in ("ValueSet", "CodeSystem"):
            return
        with self._lock:
            self._generation += 1
            self._valuesets = {}
            self._codesystems = {}
            self._implicit = None

    def _put(self, generation: int, cache: dict[K, V], key: K, value: V) -> None:
        with self._lock:
            if generation == self._generation:
                cache[key] = value

    # -- code systems --------------------------------------------------------------------------

    def code_system(self, url: str, version: str | None = None) -> CodeSystemIndex | None:
        """The indexed code system (a supplement does not count: it defines no codes)."""
        cache = self._codesystems
        hit = cache.get((url, version))
        if hit is not None:
            return hit
        generation = self._generation
        canonical = f"{url}|{version}" if version else url
        resource = self.registry.get(canonical, "CodeSystem")
        if resource is None or resource.get("content") == "supplement":
            # Not cached: clients name arbitrary systems, and a miss costs one dict lookup.
            return None
        index = CodeSystemIndex(resource)
        self._put(generation, cache, (url, version), index)
        return index

    def normalise(self, system: str, code: str) -> str:
        cs = self.code_system(system)
        return code if cs is None else cs.normalise(code)

    # -- value sets ----------------------------------------------------------------------------

    def compiled(self, valueset: str | dict) -> CompiledValueSet | None:
        """The membership table of a value set given by canonical or as a resource."""
        if isinstance(valueset, dict):
            url = valueset.get("url") if isinstance(valueset.get("url"), str) else ""
            return self._compile(valueset, (url,) if url else ())
        return self._compiled(valueset, ())

    def _compiled(self, canonical: str, stack: tuple[str, ...]) -> CompiledValueSet | None:
        cache = self._valuesets
        hit = cache.get(canonical)
        if hit is not None:
            return hit
        generation = self._generation
        resource = self.resolve(canonical)
        if resource is None:
            return None  # not cached, as for code systems: the key space is the clients'
        url = split_canonical(canonical)[0]
        compiled = self._compile(resource, (*stack, url))
        self._put(generation, cache, canonical, compiled)
        return compiled

    def _compile(self, resource: dict, stack: tuple[str, ...]) -> CompiledValueSet:
        members = Compiler(self, stack).compile(resource)
        url = resource.get("url") if isinstance(resource.get("url"), str) else ""
        version = resource.get("version") if isinstance(resource.get("version"), str) else None
        return CompiledValueSet(url, version, members, tuple(members.systems()))

    def imported(self, canonical: str, stack: tuple[str, ...]) -> Members:
        """An imported value set (compose.include.valueSet), guarding against cycles."""
        if split_canonical(canonical)[0] in stack:
            return Members(open={None: f"value set {canonical} imports itself"})
        compiled = self._compiled(canonical, stack)
        if compiled is None:
            return Members(open={None: f"the imported value set {canonical} is not known"})
        return compiled.members

    def resolve(self, canonical: str) -> dict | None:
        """A ValueSet by canonical, including the implicit value sets of code systems.

        Implicit ones (`CodeSystem.valueSet`, `[system]?fhir_vs`, `?fhir_vs=isa/[code]`) are
        synthesised as a compose, so they go through the same rules as any other value set.
        """
        found = self.registry.get(canonical, "ValueSet")
        if found is not None:
            return found
        url = split_canonical(canonical)[0]
        system, query = url, None
        if "?fhir_vs" in url:
            system, _, query = url.partition("?fhir_vs")
            query = query.lstrip("=")
        else:
            implicit = self._implicit
            if implicit is None:
                generation = self._generation
                implicit = {cs["valueSet"]: cs["url"] for cs in self.registry.all("CodeSystem")
                            if isinstance(cs.get("valueSet"), str)
                            and isinstance(cs.get("url"), str)}
                with self._lock:
                    if generation == self._generation:
                        self._implicit = implicit
            if url not in implicit:
                return None
            system = implicit[url]
        include: dict = {"system": system}
        if query and query.startswith("isa/"):
            include["filter"] = [{"property": "concept", "op": "is-a", "value": query[4:]}]
        elif query:
            include["filter"] = [{"property": "fhir_vs", "op": "=", "value": query}]
        return {"resourceType": "ValueSet", "url": url, "status": "active",
                "compose": {"include": [include]}}

    # -- the contract --------------------------------------------------------------------------

    def validate_code(
        self, valueset: str | dict, system: str | None, code: str, display: str | None = None,
        *, abstract_ok: bool = False,
    ) -> CodeCheck:
        """Membership of one code; `abstract_ok` admits not-selectable codes (grouping use)."""
        compiled = self.compiled(valueset)
        if compiled is None:
            return CodeCheck(None, f"Value set {valueset} is not known to this server, so the "
                                   "code was not checked")
        if system is not None:
            return self._check(compiled, system, code, display, abstract_ok)
        # A bare `code` element: the code must come from one of the value set's systems.
        undecided: CodeCheck | None = None
        for candidate in compiled.systems:
            check = self._check(compiled, candidate, code, display, abstract_ok)
            if check.valid:
                return check
            if check.valid is None and undecided is None:
                undecided = check
        if undecided is not None:
            return undecided
        if None in compiled.members.open:
            return CodeCheck(None, f"Code '{code}' was not checked against value set "
                                   f"{compiled.label}: {compiled.members.open[None]}")
        return CodeCheck(False, f"Code '{code}' is not in value set {compiled.label}")

    def _check(self, compiled: CompiledValueSet, system: str, code: str, display: str | None,
               abstract_ok: bool) -> CodeCheck:
        members = compiled.members
        cs = self.code_system(system)
        key = (system, code if cs is None else cs.normalise(code))
        state = members.check(key)
        entry = members.entry(key)
        concept = cs.find(code) if cs is not None else None
        known = (concept.display if concept is not None and concept.display else None) or (
            entry.display if entry is not None else None)
        if state is False:
            if cs is not None and cs.complete and concept is None:
                message = f"Unknown code '{code}' in code system {system}"
            elif system not in compiled.systems:
                message = f"Code system {system} is not in value set {compiled.label}"
            else:
                message = f"Code '{code}' from {system} is not in value set {compiled.label}"
            return CodeCheck(False, message, known, system)
        notes: list[str] = []
        if state is True:
            assert entry is not None
            if entry.abstract and not abstract_ok:
                return CodeCheck(False, f"Code '{code}' from {system} is abstract (not "
                                        "selectable) and cannot be used here", known, system)
            if entry.code != code:
                notes.append(f"Code '{code}' differs in case from '{entry.code}' in {system}")
            if entry.inactive:
                notes.append(f"Code '{entry.code}' from {system} is inactive")
        else:
            notes.append(f"Code '{code}' from {system} was not checked against value set "
                         f"{compiled.label}: {members.reason(key)}")
        if display is not None:
            mismatch = _display_mismatch(display, concept, entry)
            if mismatch is not None:
                notes.append(f"Display '{display}' for code '{code}' from {system} does not "
                             f"match '{mismatch}'")
        return CodeCheck(state, "; ".join(notes), known, system)

    def expand(
        self, valueset: str | dict, *, filter: str | None = None, offset: int = 0,
        count: int | None = None, active_only: bool = False,
    ) -> Expansion:
        """All codes (after `filter`), paged; raises when the content is not known in full."""
        if offset < 0 or (count is not None and count < 0):
            raise InvalidRequest("offset and count must not be negative")
        compiled = self.compiled(valueset)
        if compiled is None:
            raise NotFound(f"Value set {valueset} is not known")
        members = compiled.members
        if not members.complete:
            reason = next(iter(members.open.values()), None) or next(
                why for _, why in members.maybe.values())
            raise ExpansionNotPossible(f"Value set {compiled.label} cannot be expanded: {reason}")
        entries = list(members.yes.values())
        if active_only:
            entries = [e for e in entries if not e.inactive]
        if filter:
            entries = [e for e in entries if _matches(filter, e)]
        total = len(entries)
        page = entries[offset:] if count is None else entries[offset:offset + count]
        if len(page) > self.max_expansion:
            raise ExpansionTooCostly(
                f"Value set {compiled.label} has {total} codes"
                f"{' matching the filter' if filter else ''}, more than the {self.max_expansion} "
                "this server returns at once: page with count and offset, or use a filter")
        return Expansion(
            valueset_url=compiled.url, total=total,
            contains=[(e.system, e.version, e.code, e.display) for e in page],
            valueset_version=compiled.version, offset=offset, entries=page,
        )

    def lookup(self, system: str, code: str, version: str | None = None) -> dict | None:
        """The concept (with display, designations, properties) or None.

        Keys: system, name, version, code, display, definition, abstract, inactive,
        designations (FHIR `designation` dicts) and properties (dicts with `code` and one
        value[x], the form Parameters parts take), including `parent`/`child` from the
        hierarchy however the code system expressed it.
        """
        cs = self.code_system(system, version)
        if cs is None:
            return None
        concept = cs.find(code)
        if concept is None:
            return None
        properties = [p for p in concept.properties if p.get("code") not in ("parent", "child")]
        properties += [{"code": "parent", "valueCode": p} for p in concept.parents]
        properties += [{"code": "child", "valueCode": c} for c in concept.children]
        return {
            "system": system,
            "name": cs.name,
            "version": cs.version,
            "code": concept.code,
            "display": concept.display,
            "definition": concept.definition,
            "abstract": concept.abstract,
            "inactive": concept.inactive,
            "designations": list(concept.designations),
            "properties": properties,
        }


def _words(text: str) -> str:
    return " ".join(text.split()).casefold()


def _display_mismatch(display: str, concept: Concept | None, entry: Entry | None) -> str | None:
    """The preferred display when `display` is none of the accepted ones; else None.

    Accepted: the code system's display, any of its designations and the value set's own
    display, compared case-insensitively with whitespace collapsed (as people type them).
    """
    accepted: list[str] = []
    if concept is not None:
        if concept.display:
            accepted.append(concept.display)
        accepted += [d["value"] for d in concept.designations if isinstance(d.get("value"), str)]
    if entry is not None and entry.display:
        accepted.append(entry.display)
    if not accepted:
        return None
    wanted = _words(display)
    if any(_words(a) == wanted for a in accepted):
        return None
    return accepted[0]


def _matches(text: str, entry: Entry) -> bool:
    """$expand `filter`: every word appears in the code or the display (case-insensitive)."""
    haystack = f"{entry.code} {entry.display or ''}".casefold()
    return all(word in haystack for word in text.casefold().split())
