"""StructureDefinitions compiled into trees of small element checkers.

A snapshot is compiled once into `Element` objects (cardinality, allowed types, fixed/pattern,
binding, invariants, slicing), linked by element id into a tree. Each element that holds a
complex type gets a `Structure`: the map from JSON property name (`valueQuantity`,
`_birthDate`) to child element, computed once, so validating a resource is one walk over its
JSON with dictionary lookups. Elements the snapshot does not spell out (a `CodeableConcept`
without profile constraints) use the compiled base definition of their data type, compiled
once per type and shared by every profile.

The walk itself lives in `ekd.validation.walker`; this module only builds and caches.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ekd.definitions.registry import Registry
from ekd.validation.invariants import Invariant, compile_invariant
from ekd.validation.primitives import (
    DEFAULT_REGEX,
    FHIR_TYPE_EXT,
    PRIMITIVE_TYPES,
    SYSTEM_TYPES,
    PrimitiveCheck,
    make_check,
    regex_of,
)
from ekd.validation.snapshot import BASE, SnapshotError, SnapshotGenerator, assign_ids

if TYPE_CHECKING:
    from collections.abc import Iterator

UNBOUNDED = sys.maxsize
_UNSET = object()

#: Invariants checked inline by the walker rather than through `Invariant` objects.
_INLINE = frozenset({"ele-1", "ext-1"})


class CompileError(ValueError):
    """A StructureDefinition that cannot be used for validation."""


@dataclass(slots=True, eq=False)
class TypeRef:
    """One allowed type of an element (`ElementDefinition.type`)."""

    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()
    aggregation: tuple[str, ...] = ()
    primitive: bool = False
    check: PrimitiveCheck | None = None
    #: The JSON name suffix for choice elements: `Quantity` in `valueQuantity`.
    suffix: str = ""
    #: The target resource types allowed by `target_profiles` (None: any).
    target_types: frozenset[str] | None = None


@dataclass(slots=True, eq=False)
class Discriminator:
    type: str  # value | pattern | type | exists | profile
    path: str


@dataclass(slots=True, eq=False)
class Slicing:
    discriminators: tuple[Discriminator, ...]
    rules: str  # closed | open | openAtEnd
    ordered: bool


@dataclass(slots=True, eq=False)
class Element:
    """One compiled ElementDefinition."""

    id: str
    path: str
    #: JSON property name, without `[x]` for choices.
    name: str
    profile: CompiledProfile = field(repr=False)
    min: int = 0
    max: int = UNBOUNDED
    #: Whether the base definition repeats (decides JSON array vs. single value).
    repeats: bool = False
    choice: bool = False
    types: tuple[TypeRef, ...] = ()
    fixed: Any = None
    pattern: Any = None
    binding_strength: str | None = None
    binding_valueset: str | None = None
    additional_bindings: tuple[tuple[str, str], ...] = ()
    invariants: tuple[Invariant, ...] = field(default=(), repr=False)
    max_length: int | None = None
    min_value: Any = None
    max_value: Any = None
    min_value_type: str = ""
    max_value_type: str = ""
    slice_name: str | None = None
    slicing: Slicing | None = None
    slices: list[Element] = field(default_factory=list, repr=False)
    children: list[Element] = field(default_factory=list, repr=False)
    content_reference: str | None = None
    is_modifier: bool = False
    #: "BDS 7 (BSN)": the element's mapping to an external data set named in messages.
    mapping_label: str | None = None
    definition: dict = field(default_factory=dict, repr=False)
    #: Anything to check on a primitive value beyond its format (a fast path skips it all).
    value_rules: bool = True
    is_extension: bool = False
    _structure: Structure | None = field(default=None, repr=False)
    _fhirpath_base: object = field(default=_UNSET, repr=False)
    _typed: dict[str, Structure] | None = field(default=None, repr=False)
    #: Lazily computed slice matchers (see walker).
    matcher: Any = field(default=None, repr=False)
    #: What the walker does with a complex value of each type, worked out on first use
    #: (`ekd.validation.walker.ValuePlan`), by TypeRef.
    plans: dict[TypeRef, Any] | None = field(default=None, repr=False)

    @property
    def fhirpath_base(self) -> str | None:
        base = self._fhirpath_base
        if base is _UNSET:
            base = self._fhirpath_base = self._base()
        return base  # type: ignore[return-value]

    def _base(self) -> str | None:
        """What a FHIRPath engine needs to type this element's value: the resource type at
        the root, the data type where there is one, else the element path (backbones)."""
        if "." not in self.path:
            return self.path if self.profile.kind != "resource" else None
        if len(self.types) == 1 and self.types[0].code not in ("BackboneElement", "Element"):
            return self.types[0].code
        return self.path.replace("[x]", "")

    def structure_for(self, t: TypeRef, compiler: Compiler) -> Structure | None:
        """For a choice of several types whose snapshot spells out children: the type's own
        children, with the snapshot's constraints on those it has (`value[x].value`)."""
        cache = self._typed
        if cache is None:
            cache = self._typed = {}
        hit = cache.get(t.code)
        if hit is None:
            dt = compiler.datatype(t.code)
            own = {c.name: c for c in self.children}
            base = dt.root.children if dt is not None else []
            hit = Structure.of([own.get(c.name, c) for c in base], self.profile)
            cache[t.code] = hit
        return hit

    def own_structure(self) -> Structure | None:
        """The element's children as spelled out in the snapshot (None: use the type's)."""
        if not self.children:
            return None
        if self._structure is None:
            self._structure = Structure.of(self.children, self.profile)
        return self._structure


@dataclass(slots=True, eq=False)
class Structure:
    """The children of a complex element, indexed by JSON property name."""

    elements: list[Element]
    #: JSON name -> (element, type) for every allowed name (choices expanded).
    keymap: dict[str, tuple[Element, TypeRef]]
    required: list[Element]
    #: Choice element prefixes (`value`) for messages about types a profile does not allow.
    choices: dict[str, Element]

    @classmethod
    def of(cls, elements: list[Element], profile: CompiledProfile) -> Structure:
        keymap: dict[str, tuple[Element, TypeRef]] = {}
        choices: dict[str, Element] = {}
        for e in elements:
            if e.choice:
                choices[e.name] = e
                for t in e.types:
                    keymap[e.name + t.suffix] = (e, t)
            elif e.types:
                keymap[e.name] = (e, e.types[0])
            elif e.content_reference:
                keymap[e.name] = (e, TypeRef("BackboneElement"))
            else:
                keymap[e.name] = (e, TypeRef("Element"))
        required = [e for e in elements if e.min > 0 or any(s.min > 0 for s in e.slices)]
        return cls(elements, keymap, required, choices)


@dataclass(slots=True, eq=False)
class CompiledProfile:
    url: str
    version: str | None
    name: str
    type: str
    kind: str
    derivation: str | None
    sd: dict = field(repr=False)
    root: Element = field(init=False, repr=False)
    by_id: dict[str, Element] = field(default_factory=dict, repr=False)
    #: Extension definitions: where the extension may be used.
    contexts: tuple[tuple[str, str], ...] = ()
    #: Problems found while compiling (unusable parts of the definition).
    problems: list[str] = field(default_factory=list)

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url

    def elements(self) -> Iterator[Element]:
        return iter(self.by_id.values())


class Compiler:
    """Compiles and caches StructureDefinitions; one per registry, shared by all threads."""

    def __init__(self, registry: Registry, snapshots: SnapshotGenerator | None = None,
                 mapping_identities: tuple[str, ...] = ("bds",)) -> None:
        self.registry = registry
        #: `ElementDefinition.mapping` identities whose maps are named in messages.
        self.mapping_identities = mapping_identities
        self.snapshots = snapshots or SnapshotGenerator(registry)
        self._lock = threading.RLock()
        self._profiles: dict[str, CompiledProfile] = {}
        #: `datatype(code)` results by type code (the walker asks for every complex value).
        self._datatypes: dict[str, CompiledProfile] = {}
        self._failed: dict[str, str] = {}
        self._by_sd: dict[int, tuple[dict, CompiledProfile]] = {}
        self._checks: dict[str, PrimitiveCheck] = {}
        self._resource_types: frozenset[str] | None = None
        registry.subscribe(self._changed)

    def _changed(self, resource: dict) -> None:
        if resource.get("resourceType") in ("StructureDefinition", "ImplementationGuide"):
            self.clear()

    def clear(self) -> None:
        with self._lock:
            self._profiles.clear()
            self._datatypes.clear()
            self._failed.clear()
            self._by_sd.clear()
            self._resource_types = None

    # -- lookups -------------------------------------------------------------------------------

    def profile(self, canonical: str) -> CompiledProfile | None:
        """The compiled StructureDefinition for a canonical (or base type name); None if
        unknown. Raises CompileError when it exists but cannot be used."""
        hit = self._profiles.get(canonical)
        if hit is not None:
            return hit
        if canonical in self._failed:
            raise CompileError(self._failed[canonical])
        sd = self.registry.structure_definition(canonical)
        if sd is None:
            return None
        try:
            compiled = self.compile(sd)
        except CompileError as exc:
            with self._lock:
                self._failed[canonical] = str(exc)
            raise
        with self._lock:
            self._profiles[canonical] = compiled
        return compiled

    def extension(self, url: str) -> CompiledProfile | None:
        """An extension definition by its url only (a relative url such as `code` inside a
        complex extension is not the primitive type `code`)."""
        if "/" not in url and self.registry.get(url, "StructureDefinition") is None:
            return None
        return self.profile(url)

    def datatype(self, code: str) -> CompiledProfile | None:
        """The base definition of a type, compiled once and shared."""
        hit = self._datatypes.get(code)
        if hit is not None:
            return hit
        canonical = code if "/" in code else BASE + code
        try:
            found = self.profile(canonical)
        except CompileError:
            return None
        with self._lock:  # only what `profile` still holds: a clear() in between wins
            if found is not None and found is self._profiles.get(canonical):
                self._datatypes[code] = found
        return found

    def resource_types(self) -> frozenset[str]:
        if self._resource_types is None:
            self._resource_types = frozenset(
                sd["type"] for sd in self.registry.all("StructureDefinition")
                if sd.get("kind") == "resource" and sd.get("derivation") == "specialization"
                and isinstance(sd.get("type"), str)
            ) | {"Resource", "DomainResource"}
        return self._resource_types

    def primitive_check(self, code: str) -> PrimitiveCheck:
        check = self._checks.get(code)
        if check is None:
            regex = regex_of(self.registry.structure_definition(code)) or DEFAULT_REGEX.get(code)
            check = make_check(code, regex)
            self._checks[code] = check
        return check

    # -- compiling -----------------------------------------------------------------------------

    def compile(self, sd: dict) -> CompiledProfile:
        with self._lock:
            hit = self._by_sd.get(id(sd))
            if hit is not None and hit[0] is sd:
                return hit[1]
        try:
            elements = self.snapshots.elements(sd)
        except SnapshotError as exc:
            raise CompileError(f"Unable to generate the snapshot of {sd.get('url')}: {exc}") \
                from None
        profile = CompiledProfile(
            url=str(sd.get("url", "")), version=sd.get("version"),
            name=str(sd.get("name") or sd.get("id") or ""), type=str(sd.get("type", "")),
            kind=str(sd.get("kind", "")), derivation=sd.get("derivation"), sd=sd,
        )
        profile.contexts = tuple(
            (str(c.get("type", "")), str(c.get("expression", ""))) for c in sd.get("context", [])
        )
        mapping_names = {m.get("identity"): m.get("name") for m in sd.get("mapping", [])
                         if m.get("identity") in self.mapping_identities}
        _build(self, profile, assign_ids(elements), mapping_names)
        with self._lock:
            self._by_sd[id(sd)] = (sd, profile)
        return profile

    def type_ref(self, t: dict) -> TypeRef:
        code = str(t.get("code", ""))
        if code in SYSTEM_TYPES:
            fhir_type = next((e.get("valueUrl") for e in t.get("extension", [])
                              if e.get("url") == FHIR_TYPE_EXT), None)
            code = fhir_type or SYSTEM_TYPES[code]
        primitive = code in PRIMITIVE_TYPES
        targets = tuple(t.get("targetProfile", []))
        target_types: frozenset[str] | None = None
        if targets:
            names = set()
            for url in targets:
                sd = self.registry.get(url, "StructureDefinition")
                name = sd.get("type") if sd else url.rsplit("/", 1)[-1]
                names.add(str(name))
            target_types = None if names & {"Resource", "DomainResource"} else frozenset(names)
        return TypeRef(
            code=code,
            profiles=tuple(t.get("profile", [])),
            target_profiles=targets,
            aggregation=tuple(t.get("aggregation", [])),
            primitive=primitive,
            check=self.primitive_check(code) if primitive else None,
            suffix=code[:1].upper() + code[1:],
            target_types=target_types,
        )


def _build(compiler: Compiler, profile: CompiledProfile, elements: list[dict],
           mapping_names: dict) -> None:
    by_id: dict[str, Element] = {}
    root: Element | None = None
    for e in elements:
        el = _element(compiler, profile, e, mapping_names)
        by_id[el.id] = el
        if root is None:
            root = el
            continue
        parent_id, _, last = el.id.rpartition(".")
        name, _, sl = last.partition(":")
        if sl:
            base_slice, slash, _ = sl.rpartition("/")
            owner = by_id.get(f"{parent_id}.{name}" + (f":{base_slice}" if slash else ""))
            if owner is None:
                profile.problems.append(f"Slice {el.id} has no sliced element")
                continue
            owner.slices.append(el)
        else:
            parent = by_id.get(parent_id)
            if parent is None:
                profile.problems.append(f"Element {el.id} has no parent")
                continue
            parent.children.append(el)
    if root is None:
        raise CompileError(f"{profile.url} has no elements")
    profile.root = root
    profile.by_id = by_id
    for el in by_id.values():
        el.invariants = _invariants(el)
        el.value_rules = bool(
            el.max_length is not None or el.min_value is not None or el.max_value is not None
            or el.fixed is not None or el.pattern is not None or el.binding_valueset
            or el.invariants)
        el.is_extension = el.name in ("extension", "modifierExtension") and bool(el.types) \
            and el.types[0].code == "Extension"


def _element(compiler: Compiler, profile: CompiledProfile, e: dict,
             mapping_names: dict) -> Element:
    path = str(e.get("path", ""))
    last = path.rsplit(".", 1)[-1]
    choice = last.endswith("[x]")
    el = Element(id=str(e.get("id", path)), path=path, name=last[:-3] if choice else last,
                 profile=profile, definition=e)
    el.choice = choice
    el.min = int(e.get("min", 0) or 0)
    el.max = _max(e.get("max"))
    base_max = _max((e.get("base") or {}).get("max", e.get("max")))
    el.repeats = base_max > 1 or el.max > 1
    el.slice_name = e.get("sliceName")
    el.content_reference = e.get("contentReference")
    el.is_modifier = bool(e.get("isModifier"))
    el.types = tuple(compiler.type_ref(t) for t in e.get("type", []))
    if not choice and len(el.types) > 1 and "." in path:
        # An R3-style renamed choice (`Observation.valueQuantity`) or odd definitions: treat
        # the element as named by its path.
        el.choice = False
    for key, value in e.items():
        if key.startswith("fixed"):
            el.fixed = value
        elif key.startswith("pattern"):
            el.pattern = value
        elif key.startswith("minValue"):
            el.min_value, el.min_value_type = value, key[len("minValue"):]
        elif key.startswith("maxValue"):
            el.max_value, el.max_value_type = value, key[len("maxValue"):]
    if isinstance(e.get("maxLength"), int):
        el.max_length = e["maxLength"]
    binding = e.get("binding")
    if isinstance(binding, dict) and binding.get("valueSet"):
        el.binding_strength = binding.get("strength")
        el.binding_valueset = binding["valueSet"]
        extra = []
        for ext in binding.get("extension", []):
            # R5's additionalBinding, as the R4 extension (both names are in use).
            if ext.get("url", "").endswith(("additional-binding", "binding.additional")):
                purpose = vs = None
                for sub in ext.get("extension", []):
                    if sub.get("url") == "purpose":
                        purpose = sub.get("valueCode")
                    elif sub.get("url") == "valueSet":
                        vs = sub.get("valueCanonical")
                if purpose and vs:
                    extra.append((purpose, vs))
        el.additional_bindings = tuple(extra)
    slicing = e.get("slicing")
    if isinstance(slicing, dict):
        el.slicing = Slicing(
            discriminators=tuple(Discriminator(str(d.get("type")), str(d.get("path", "$this")))
                                 for d in slicing.get("discriminator", [])),
            rules=str(slicing.get("rules", "open")),
            ordered=bool(slicing.get("ordered", False)),
        )
    for m in e.get("mapping", []):
        identity = m.get("identity")
        if identity in mapping_names and m.get("map"):
            label = f"{mapping_names[identity] or str(identity).upper()} {m['map']}"
            if m.get("comment"):
                label += f" ({m['comment']})"
            el.mapping_label = label
            break
    return el


def _invariants(el: Element) -> tuple[Invariant, ...]:
    """Compiled after the tree is built: FHIRPath fallbacks need the focus's choice names."""
    choices = tuple(c.name for c in el.children if c.choice)
    out = []
    for c in el.definition.get("constraint", []):
        if c.get("key") in _INLINE or not isinstance(c, dict):
            continue
        out.append(compile_invariant(c, c.get("source") or el.profile.url, choices))
    return tuple(out)


def _max(value: object) -> int:
    if value in (None, "*"):
        return UNBOUNDED
    try:
        return int(str(value))
    except ValueError:
        return UNBOUNDED
