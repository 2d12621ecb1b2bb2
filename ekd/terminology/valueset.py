"""Compiling a ValueSet definition into a membership table, with "not known" kept explicit.

The server holds some code systems in full, some in part (`fragment`/`example`), and many not
at all (LOINC, SNOMED CT, UCUM). A value set mixing them is neither a finite set we can list
nor one we may pretend to know. `Members` is therefore a three-valued set: codes known to be
in (`yes`), codes that might be (`maybe`, e.g. enumerated but hit by an exclude we cannot
evaluate), whole systems whose codes are undecided (`open`), and codes known to be out inside
such systems (`no`). Union, intersection and difference follow Kleene logic, so "not checked"
survives every compose rule instead of silently turning into true or false.

Rules worth knowing (R4 leaves some open): the parts of one include (system, value sets) are
intersected, includes are united, excludes win. `compose.inactive = false` drops inactive codes
that a whole-system or filter include brings in, not codes the value set lists by name. A
value set with a compose that cannot be decided here, but with a complete stored expansion,
is answered from that expansion. A code system version the include pins but we do not hold
counts as a system we do not hold.

Membership tests are dictionary lookups once compiled; compiling happens once per value set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ekd.terminology.codesystem import CodeSystemIndex, Concept, UnsupportedFilter

#: (system, code in the code system's comparison form)
Key = tuple[str, str]

#: Code systems whose content this server never holds in full: national editions and external
#: terminologies. Named in messages, so people see why their code was not checked.
EXTERNAL_SYSTEMS = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED CT",
    "http://unitsofmeasure.org": "UCUM",
}


@dataclass(slots=True)
class Entry:
    system: str
    version: str | None
    code: str
    display: str | None
    abstract: bool = False
    inactive: bool = False


@dataclass(slots=True)
class Members:
    yes: dict[Key, Entry] = field(default_factory=dict)
    #: Possibly in: the entry, and why it is not certain.
    maybe: dict[Key, tuple[Entry, str]] = field(default_factory=dict)
    #: System (None: every system) -> why codes of it that are not listed are undecided.
    open: dict[str | None, str] = field(default_factory=dict)
    #: Known to be out, although their system is open.
    no: set[Key] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        """Whether `yes` is exactly the value set (then it can be expanded)."""
        return not self.maybe and not self.open

    def open_reason(self, system: str) -> str | None:
        return self.open.get(system) or self.open.get(None)

    def check(self, key: Key) -> bool | None:
        if key in self.yes:
            return True
        if key in self.maybe:
            return None
        if key in self.no:
            return False
        return None if self.open_reason(key[0]) is not None else False

    def reason(self, key: Key) -> str:
        if key in self.maybe:
            return self.maybe[key][1]
        return self.open_reason(key[0]) or ""

    def entry(self, key: Key) -> Entry | None:
        found = self.yes.get(key)
        if found is None and key in self.maybe:
            found = self.maybe[key][0]
        return found

    def systems(self) -> list[str]:
        """Every system the value set draws on (not counting an open "every system")."""
        seen = dict.fromkeys(k[0] for k in self.yes)
        seen.update(dict.fromkeys(k[0] for k in self.maybe))
        seen.update(dict.fromkeys(s for s in self.open if s is not None))
        return list(seen)


def union(a: Members, b: Members) -> Members:
    yes = dict(a.yes)
    for key, entry in b.yes.items():
        yes.setdefault(key, entry)
    maybe = {k: v for k, v in a.maybe.items() if k not in yes}
    for key, value in b.maybe.items():
        if key not in yes:
            maybe.setdefault(key, value)
    opened = {**b.open, **a.open}
    no = {k for k in a.no if b.check(k) is False} | {k for k in b.no if a.check(k) is False}
    return Members(yes, maybe, opened, no)


def intersect(a: Members, b: Members) -> Members:
    """R4: an include with a system and value sets holds the codes in all of them."""
    out = Members()
    for source in (a, b):
        for key in (*source.yes, *source.maybe):
            if key in out.yes or key in out.maybe:
                continue
            left, right = a.check(key), b.check(key)
            if left is False or right is False:
                continue
            entry = a.entry(key) or b.entry(key)
            assert entry is not None
            if left and right:
                out.yes[key] = entry
            else:
                out.maybe[key] = (entry, a.reason(key) if left is None else b.reason(key))
    for system, why in a.open.items():
        if system is None:
            out.open.update(b.open)
        elif b.open_reason(system) is not None:
            out.open[system] = why
    if None in b.open:
        for system, why in a.open.items():
            out.open.setdefault(system, why)
    out.no = {k for k in a.no | b.no if out.open_reason(k[0]) is not None}
    return out


def subtract(a: Members, excluded: Members) -> Members:
    """Exclude wins over include; an undecided exclude makes included codes undecided."""
    out = Members(open=dict(a.open), no=set(a.no))
    for key, entry in a.yes.items():
        hit = excluded.check(key)
        if hit is False:
            out.yes[key] = entry
        elif hit is None:
            out.maybe[key] = (entry, excluded.reason(key))
        elif a.open_reason(key[0]) is not None:
            out.no.add(key)
    for key, value in a.maybe.items():
        if excluded.check(key) is True:
            if a.open_reason(key[0]) is not None:
                out.no.add(key)
        else:
            out.maybe[key] = value
    for key in excluded.yes:
        if key not in a.yes and a.open_reason(key[0]) is not None:
            out.no.add(key)
    return out


class Source(Protocol):
    """What compiling needs from the terminology service (kept narrow for testing)."""

    def code_system(self, url: str, version: str | None) -> CodeSystemIndex | None: ...

    def normalise(self, system: str, code: str) -> str: ...

    def imported(self, canonical: str, stack: tuple[str, ...]) -> Members: ...


def not_held(system: str, how: str) -> str:
    name = EXTERNAL_SYSTEMS.get(system)
    what = f"{name} ({system})" if name else system
    return (f"the value set includes codes from {what} by {how}, and this server does not "
            "hold the content of that code system")


class Compiler:
    """Turns one ValueSet resource into Members; imports go back through the service cache."""

    def __init__(self, source: Source, stack: tuple[str, ...] = ()) -> None:
        self.source = source
        self.stack = stack

    def compile(self, valueset: dict) -> Members:
        compose = valueset.get("compose")
        expansion = valueset.get("expansion")
        if isinstance(compose, dict) and (compose.get("include") or compose.get("exclude")):
            members = self.compose(compose)
            if not members.complete and isinstance(expansion, dict):
                from_expansion = self.expansion(expansion)
                if from_expansion.complete:
                    # A complete stored expansion answers what the definition alone cannot
                    # (e.g. a LOINC filter expanded by the publisher).
                    return from_expansion
            return members
        if isinstance(expansion, dict):
            return self.expansion(expansion)
        return Members(open={None: "the value set has neither a compose nor an expansion"})

    def compose(self, compose: dict) -> Members:
        include_inactive = compose.get("inactive") is not False
        result = Members()
        for include in _list(compose.get("include")):
            if isinstance(include, dict):
                result = union(result, self.part(include, include_inactive))
        for exclude in _list(compose.get("exclude")):
            if isinstance(exclude, dict):
                result = subtract(result, self.part(exclude, True))
        return result

    def part(self, include: dict, include_inactive: bool) -> Members:
        parts: list[Members] = []
        system = include.get("system")
        if isinstance(system, str) and system:
            parts.append(self.system_part(system, include, include_inactive))
        for canonical in _list(include.get("valueSet")):
            if isinstance(canonical, str):
                parts.append(self.source.imported(canonical, self.stack))
        if not parts:
            return Members()
        result = parts[0]
        for other in parts[1:]:
            result = intersect(result, other)
        return result

    def system_part(self, system: str, include: dict, include_inactive: bool) -> Members:
        version = include.get("version") if isinstance(include.get("version"), str) else None
        if version == "*":  # "all versions": we hold one at most, so use whichever we hold
            version = None
        cs = self.source.code_system(system, version)
        label = f"{system}|{version}" if version else system
        if cs is not None and cs.content == "not-present":
            cs = None
        concepts = [c for c in _list(include.get("concept")) if isinstance(c, dict)]
        filters = [f for f in _list(include.get("filter")) if isinstance(f, dict)]
        if concepts:
            return self.enumerated(system, version, cs, concepts)
        if cs is None:
            listed = _enumerating_filters(filters)
            if listed is not None:
                return self.enumerated(system, version, None, [{"code": c} for c in listed])
            return Members(open={system: not_held(label, "a filter" if filters else
                                                  "the whole code system")})
        codes: Iterable[str] = cs.concepts
        for f in filters:
            prop, op, value = f.get("property"), f.get("op"), f.get("value")
            if not (isinstance(prop, str) and isinstance(op, str) and isinstance(value, str)):
                return Members(open={system: f"a filter on {label} is incomplete"})
            try:
                selected = cs.select(prop, op, value)
            except UnsupportedFilter as exc:
                return Members(open={system: f"the filter '{prop} {op} {value}' on {label} "
                                             f"cannot be evaluated here: {exc}"})
            codes = [c for c in codes if c in selected]
        out = Members()
        for code in codes:
            concept = cs.concepts[code]
            if concept.inactive and not include_inactive:
                continue
            out.yes[(system, cs.normalise(code))] = _entry(system, version or cs.version, concept)
        if not cs.complete:
            out.open[system] = (f"code system {label} is held only as a {cs.content}, so codes "
                                "it does not list were not checked")
        return out

    def enumerated(self, system: str, version: str | None, cs: CodeSystemIndex | None,
                   concepts: list[dict]) -> Members:
        """Listed codes are members even where we cannot see the code system: the value set's
        author vouched for them. Only a complete code system can overrule a listed code."""
        out = Members()
        for item in concepts:
            code = item.get("code")
            if not isinstance(code, str):
                continue
            display = item.get("display") if isinstance(item.get("display"), str) else None
            concept = cs.find(code) if cs is not None else None
            if concept is None:
                if cs is not None and cs.complete:
                    continue  # not a code of the system: a broken value set lists no such code
                key = (system, self.source.normalise(system, code))
                out.yes.setdefault(key, Entry(system, version, code, display))
                continue
            assert cs is not None
            entry = _entry(system, version or cs.version, concept)
            if display is not None:
                entry.display = display  # the value set may choose its own display
            out.yes.setdefault((system, cs.normalise(concept.code)), entry)
        return out

    def expansion(self, expansion: dict) -> Members:
        out = Members()
        for item in _flatten(_list(expansion.get("contains"))):
            system, code = item.get("system"), item.get("code")
            if not (isinstance(system, str) and isinstance(code, str)):
                continue  # a grouping header
            display = item.get("display") if isinstance(item.get("display"), str) else None
            out.yes.setdefault((system, self.source.normalise(system, code)), Entry(
                system, item.get("version"), code, display,
                abstract=item.get("abstract") is True, inactive=item.get("inactive") is True,
            ))
        total = expansion.get("total")
        offset = expansion.get("offset")
        if (isinstance(offset, int) and offset > 0) or (isinstance(total, int)
                                                         and total > len(out.yes)):
            why = "the value set carries only part of its expansion"
            out.open = {system: why for system in out.systems()} or {None: why}
        return out


def _list(value: object) -> list:
    """A repeating element, or nothing: POSTed value sets reach us unvalidated."""
    return value if isinstance(value, list) else []


def _entry(system: str, version: str | None, concept: Concept) -> Entry:
    return Entry(system, version, concept.code, concept.display, concept.abstract,
                 concept.inactive)


def _flatten(contains: list) -> Iterable[dict]:
    stack = list(reversed(contains))
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(reversed(_list(item.get("contains"))))


def _enumerating_filters(filters: list[dict]) -> list[str] | None:
    """Codes named by `code = x` / `concept in a,b` filters: decidable without the system."""
    if not filters:
        return None
    listed: list[str] | None = None
    for f in filters:
        if f.get("property") not in ("code", "concept") or not isinstance(f.get("value"), str):
            return None
        if f.get("op") == "=":
            codes = [f["value"]]
        elif f.get("op") == "in":
            codes = [v.strip() for v in f["value"].split(",") if v.strip()]
        else:
            return None
        listed = codes if listed is None else [c for c in listed if c in codes]
    return listed

