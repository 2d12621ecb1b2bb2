"""One validation run: a single walk over a resource's JSON, applying compiled elements.

For every JSON property the walker finds the compiled element (one dict lookup in the parent's
`Structure`), then checks, in this order: JSON shape (array or not), cardinality, slicing (which
decides the element definition each repetition is checked against), and per value: primitive
format or nested structure, fixed/pattern, binding, invariants, and type-specific rules
(references, extensions, narrative, nested resources).

Messages name the FHIRPath location with indexes (`Patient.identifier[1].value`), the rule and
the profile; they never contain instance values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ekd.errors import Issue
from ekd.validation.compiled import (
    UNBOUNDED,
    CompiledProfile,
    CompileError,
    Element,
    Structure,
    TypeRef,
)
from ekd.validation.invariants import (
    Scope,
    ext1_holds,
    has_value_or_children,
    unreferenced_contained,
)
from ekd.validation.primitives import decimal_of

if TYPE_CHECKING:
    from ekd.validation.validator import ProfileValidator

_ELEMENT_TYPE = TypeRef("Element")
_MISSING = object()
_QUANTITIES = frozenset({"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity",
                         "MoneyQuantity"})
_ABSOLUTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")
_RELATIVE_REF = re.compile(
    r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
_ABSOLUTE_REF = re.compile(
    r"^(.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
#: `ValuePlan.tail`: the type-specific rule a complex value gets last.
_REFERENCE, _NARRATIVE, _QUANTITY_RANGE = 1, 2, 3
#: Plans kept per element (an element has a handful of types).
_MAX_PLANS = 32
#: (any resource type, a resource type, structure, data type root with invariants, own
#: invariants, type profiles to check, binding, codings, tail): see `Walk._plan`.
ValuePlan = tuple[bool, bool, "Structure | None", "Element | None", bool, tuple[str, ...], bool,
                  bool, int]
_TYPES_WITH_BINDINGS = frozenset({"code", "Coding", "CodeableConcept", "Quantity", "string",
                                  "uri", "CodeableReference"})


@dataclass(slots=True, eq=False)
class Frame:
    """The resource being walked and where it sits (container, Bundle entry)."""

    resource: dict
    root: dict
    path: str
    #: The resource that holds this one in `contained`, if any.
    container: dict | None = None
    #: fullUrl of the Bundle entry this resource is in, and the Bundle's index of entries.
    full_url: str | None = None
    bundle: BundleIndex | None = None
    scope: Scope = field(init=False)

    def __post_init__(self) -> None:
        # %rootResource: the container of a contained resource, else the resource itself.
        self.scope = Scope(self.resource, self.container or self.resource)


@dataclass(slots=True, eq=False)
class BundleIndex:
    bundle: dict
    type: str
    #: fullUrl -> resource; plus "Type/id" -> [resources] for relative matching.
    by_url: dict[str, dict] = field(default_factory=dict)
    by_type_id: dict[str, list[tuple[str | None, dict]]] = field(default_factory=dict)

    @classmethod
    def of(cls, bundle: dict) -> BundleIndex:
        index = cls(bundle, str(bundle.get("type", "")))
        for entry in bundle.get("entry") or []:
            if not isinstance(entry, dict):
                continue
            res = entry.get("resource")
            if not isinstance(res, dict):
                continue
            full = entry.get("fullUrl")
            if isinstance(full, str):
                index.by_url.setdefault(full, res)
            if isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
                index.by_type_id.setdefault(f"{res['resourceType']}/{res['id']}", []).append(
                    (full if isinstance(full, str) else None, res))
        return index

    def resolve(self, ref: str, from_full_url: str | None) -> dict | None:
        hit = self.by_url.get(ref)
        if hit is not None:
            return hit
        m = _RELATIVE_REF.match(ref)
        if m is None:
            return None
        key = f"{m.group(1)}/{m.group(2)}"
        if from_full_url and _ABSOLUTE_REF.match(from_full_url) and "/" in from_full_url:
            base = _ABSOLUTE_REF.match(from_full_url).group(1) or ""  # type: ignore[union-attr]
            hit = self.by_url.get(base + key)
            if hit is not None:
                return hit
        candidates = self.by_type_id.get(key) or []
        for full, res in candidates:
            if full is None or not full.startswith("http") or from_full_url is None \
                    or not from_full_url.startswith("http"):
                return res
        return None


class Walk:
    """Issues of one `ProfileValidator.validate` call; not shared between threads."""

    def __init__(self, validator: ProfileValidator, root: dict) -> None:
        self.v = validator
        self.compiler = validator.compiler
        self.root = root
        self.issues: list[Issue] = []
        self._seen: set[tuple[str, str, str]] = set()
        #: Sub-walks (slice matching by profile) must not report.
        self.muted = 0
        self.errors = 0
        self._invariant_results: dict[tuple, Any] = {}

    # -- reporting -----------------------------------------------------------------------------

    def report(self, severity: str, code: str, path: str, text: str,
               el: Element | None = None, profile: CompiledProfile | None = None) -> None:
        if severity in ("error", "fatal"):
            self.errors += 1
        if self.muted:
            return
        key = (severity, path, text)
        if key in self._seen:
            return
        self._seen.add(key)
        source = profile or (el.profile if el is not None else None)
        message = f"{path}: {text}"
        if source is not None:
            message += f" (profile {source.url})"
        if el is not None and el.mapping_label:
            message = f"{el.mapping_label}: {message}"
        self.issues.append(Issue(severity, code, message, (path,)))

    # -- resources -----------------------------------------------------------------------------

    def resource(self, resource: dict, frame: Frame, profiles: list[CompiledProfile]) -> None:
        """Walk one resource against each of its profiles (a profile's snapshot includes the
        base definition, so the base is only walked on its own when there is no profile)."""
        for profile in profiles:
            root = profile.root
            struct = root.own_structure()
            if struct is None:
                continue
            self.complex(resource, struct, frame.path, frame, profile.type, root, is_resource=True)
            self.invariants(root, resource, frame.path, frame)
        self.v.resource_rules(self, resource, frame)

    # -- complex values ------------------------------------------------------------------------

    def complex(self, obj: dict, struct: Structure, path: str, frame: Frame, type_code: str,
                owner: Element | None, is_resource: bool = False) -> None:
        keymap = struct.keymap
        found: dict[Element, list] = {}
        exts: dict[str, Any] | None = None
        for key, value in obj.items():
            entry = keymap.get(key)
            if entry is not None:
                el = entry[0]
                if el in found:
                    self.report("error", "structure", f"{path}.{el.name}",
                                "Only one of the choice types may be present", el)
                    continue
                found[el] = [key, value, entry[1], None]
            elif key[0] == "_":
                if exts is None:
                    exts = {}
                exts[key[1:]] = value
            elif not (is_resource and key == "resourceType"):
                self._unknown(key, struct, path, owner)
        if exts:
            for name, ext in exts.items():
                entry = keymap.get(name)
                if entry is None or not entry[1].primitive:
                    self.report("error", "structure", f"{path}.{name}",
                                f"Unrecognized property '_{name}'",
                                profile=_prof(owner))
                    continue
                el = entry[0]
                rec = found.get(el)
                if rec is None:
                    found[el] = [name, None, entry[1], ext]
                elif rec[0] == name:
                    rec[3] = ext
                else:
                    self.report("error", "structure", f"{path}.{el.name}",
                                "Only one of the choice types may be present", el)
        for el in struct.required:
            if el not in found:
                if el.min > 0:
                    self.report("error", "structure", f"{path}.{el.name}",
                                f"minimum required = {el.min}, but only found 0", el)
                for s in el.slices:
                    if s.min > 0:
                        self.report("error", "structure", f"{path}.{el.name}",
                                    f"Slice '{s.id}': a matching slice is required, but not "
                                    f"found (minimum required = {s.min}, found 0)", s)
        for el, (key, value, t, ext) in found.items():
            self.element(el, key, value, t, ext, path, frame, type_code, owner)

    def _unknown(self, key: str, struct: Structure, path: str, owner: Element | None) -> None:
        for prefix, el in struct.choices.items():
            if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
                allowed = ", ".join(t.code for t in el.types)
                self.report("error", "structure", f"{path}.{prefix}",
                            f"The type '{key[len(prefix):]}' is not allowed here (valid types: "
                            f"{allowed})", el)
                return
        # The expression names the property itself, so a client can point at it.
        self.report("error", "structure", f"{path}.{key}", f"Unrecognized property '{key}'",
                    profile=_prof(owner))

    def element(self, el: Element, key: str, value: Any, t: TypeRef, ext: Any, path: str,
                frame: Frame, host_type: str, owner: Element | None = None) -> None:
        """All occurrences of one element: shape, cardinality, slicing, then each value."""
        base = f"{path}.{el.name}"
        item_base = f"{base}.ofType({t.code})" if el.choice else base
        if not el.repeats:
            if type(value) is list or type(ext) is list:
                self.report("error", "structure", item_base,
                            f"The property {key} must be a single value, not an array", el)
                values = value if type(value) is list else [value]
                items = [(v, None, t, f"{item_base}[{i}]") for i, v in enumerate(values)]
            elif value is None and ext is None:
                self.report("error", "structure", item_base,
                            "Null values are not allowed here", el)
                return
            elif el.max >= 1 and el.slicing is None and not el.is_extension:
                self.value(el, t, value, ext, item_base, frame)
                return
            else:
                items = [(value, ext, t, item_base)]
        else:
            if (value is not None and type(value) is not list) or (
                    ext is not None and type(ext) is not list):
                self.report("error", "structure", item_base,
                            f"The property {key} must be a JSON Array, not an Object", el)
                if value is not None and type(value) is not list:
                    value = [value]
                if ext is not None and type(ext) is not list:
                    ext = [ext]
            if value == [] or ext == []:
                self.report("error", "structure", item_base,
                            "Array cannot be empty - the property should not be present if "
                            "it has no values", el)
            if ext is None:
                items = [(v, None, t, f"{item_base}[{i}]")
                         for i, v in enumerate(value) if v is not None]
            else:
                vs = value or []
                items = []
                for i in range(max(len(vs), len(ext))):
                    v = vs[i] if i < len(vs) else None
                    x = ext[i] if i < len(ext) else None
                    if v is not None or x is not None:  # the Java validator skips null pairs
                        items.append((v, x, t, f"{item_base}[{i}]"))
        count = len(items)
        if count < el.min:
            self.report("error", "structure", base,
                        f"minimum required = {el.min}, but only found {count}", el)
        if count > el.max:
            self.report("error", "structure", base,
                        f"max allowed = {el.max}, but found {count}", el)
        if el.is_extension:
            self.extensions(el, items, frame, host_type, path, owner)
            return
        if el.slicing is not None and el.slices:
            targets = self.slice(el, items, frame, base)
            for (v, x, t2, item_path), target in zip(items, targets, strict=True):
                self.value(target, t2 if target is el else _type_in(target, t2), v, x,
                           item_path, frame)
            return
        for v, x, t2, item_path in items:
            self.value(el, t2, v, x, item_path, frame)

    # -- single values -------------------------------------------------------------------------

    def value(self, el: Element, t: TypeRef, value: Any, ext: Any, path: str,
              frame: Frame) -> None:
        if t.primitive:
            if value is not None:
                self.primitive(el, t, value, path, frame)
            if ext is not None:
                self.primitive_element(ext, path, frame, t.code, el)
            return
        if not isinstance(value, dict):
            self.report("error", "structure", path,
                        f"This property must be a JSON object (type {t.code}), not a "
                        f"{_json_kind(value)}", el)
            return
        plans = el.plans
        plan = plans.get(t) if plans is not None else None
        if plan is None:
            plan = self._plan(el, t)
        (any_resource, resource_type, struct, dt_root, own_invariants, profiles, binding,
         codings, tail) = plan
        if any_resource or (resource_type and "resourceType" in value):
            self.v.nested_resource(self, value, path, frame, el, t)
            if own_invariants:
                # e.g. an invariant on Patient.contained: %resource is still the Patient.
                self.invariants(el, value, path, frame, base=value.get("resourceType"))
            return
        if not has_value_or_children(value):
            self.report("error", "invariant", path,
                        "Constraint failed: ele-1: 'All FHIR elements must have a @value or "
                        "children'", el)
            return
        if struct is not None:
            self.complex(value, struct, path, frame, t.code, el)
        if dt_root is not None:
            self.invariants(dt_root, value, path, frame, owner=el)
        if own_invariants:
            self.invariants(el, value, path, frame)
        for url in profiles:
            self.type_profile(url, t, value, path, frame)
        if el.fixed is not None:
            self.fixed(el, value, el.fixed, path, exact=True)
        elif el.pattern is not None:
            self.fixed(el, value, el.pattern, path, exact=False)
        if binding:
            self.v.binding(self, el, t, value, path)
        elif codings:
            self.v.codings(self, el, t, value, path)
        if tail == _REFERENCE:
            self.v.reference(self, el, t, value, path, frame)
        elif tail == _NARRATIVE:
            self.v.narrative(self, el, value, path, frame)
        elif tail == _QUANTITY_RANGE:
            self.v.quantity_range(self, el, value, path)

    def _plan(self, el: Element, t: TypeRef) -> ValuePlan:
        """What `value` does with a complex value of type `t` in `el`: everything that depends
        on the definitions only, decided once per element and type instead of per value. The
        definitions cannot change under a plan: a changed one makes the compiler drop every
        compiled element, plans included."""
        compiler = self.compiler
        struct = el.own_structure() if len(el.types) < 2 or not el.children else \
            el.structure_for(t, compiler)
        dt = None
        if struct is None:
            if el.content_reference:
                target = self._content_reference(el)
                struct = target.own_structure() if target is not None else None
            else:
                dt = compiler.datatype(t.code)
                struct = dt.root.own_structure() if dt is not None else None
        if dt is None and t.code not in ("BackboneElement", "Element") and not el.content_reference:
            dt = compiler.datatype(t.code)
        code = t.code
        if code == "Reference":
            tail = _REFERENCE
        elif code == "Narrative":
            tail = _NARRATIVE
        elif code in _QUANTITIES and (el.min_value is not None or el.max_value is not None):
            tail = _QUANTITY_RANGE
        else:
            tail = 0
        binding = bool(el.binding_valueset and code in _TYPES_WITH_BINDINGS)
        plan: ValuePlan = (
            code in ("Resource", "DomainResource"),
            code in compiler.resource_types(),
            struct,
            dt.root if dt is not None and dt.root.invariants else None,
            bool(el.invariants),
            () if code == "Extension" else t.profiles,
            binding,
            not binding and code in ("Coding", "CodeableConcept"),
            tail,
        )
        plans = el.plans
        if plans is None:
            plans = el.plans = {}
        if len(plans) < _MAX_PLANS:  # ad-hoc TypeRefs (`TypeRef("Extension")`) are not kept
            plans[t] = plan
        return plan

    def primitive(self, el: Element, t: TypeRef, value: Any, path: str, frame: Frame) -> None:
        problem = t.check(value) if t.check is not None else None
        if problem is not None:
            self.report("error", "invalid", path, problem, el)
            return
        if not el.value_rules:
            return
        if el.max_length is not None and isinstance(value, str) and len(value) > el.max_length:
            self.report("error", "invalid", path,
                        f"value is longer than permitted maximum length of {el.max_length}", el)
        if el.min_value is not None or el.max_value is not None:
            self.range(el, t, value, path)
        if el.fixed is not None and not _primitive_equal(value, el.fixed):
            self.report("error", "value", path, "Value does not match the fixed value", el)
        elif el.pattern is not None and not _primitive_equal(value, el.pattern):
            self.report("error", "value", path, "Value does not match the required pattern", el)
        if el.binding_valueset and t.code in _TYPES_WITH_BINDINGS:
            self.v.binding(self, el, t, value, path)
        if el.invariants:
            self.invariants(el, value, path, frame)

    def primitive_element(self, ext: Any, path: str, frame: Frame, type_code: str,
                          owner: Element) -> None:
        """`_birthDate`: the primitive's id and extensions, an Element."""
        if not isinstance(ext, dict):
            self.report("error", "structure", path,
                        "The extension part of a primitive must be a JSON object")
            return
        dt = self.compiler.datatype("Element")
        struct = dt.root.own_structure() if dt else None
        if struct is not None:
            self.complex(ext, struct, path, frame, type_code, owner)

    def range(self, el: Element, t: TypeRef, value: Any, path: str) -> None:
        low, high = el.min_value, el.max_value
        if el.min_value_type == "Duration" or el.max_value_type == "Duration":
            # minValueDuration/maxValueDuration on a date: relative to today.
            if el.min_value_type == "Duration":
                low = _relative_date(low, -1)
            if el.max_value_type == "Duration":
                high = _relative_date(high, 1)
        number = decimal_of(value)
        if number is not None:
            if low is not None and (d := decimal_of(low)) is not None and number < d:
                self.report("error", "invalid", path,
                            f"The value is less than the specified minimum value ({low})", el)
            if high is not None and (d := decimal_of(high)) is not None and number > d:
                self.report("error", "invalid", path,
                            f"The value is greater than the specified maximum value ({high})", el)
            return
        if isinstance(value, str):
            if isinstance(low, str) and _date_less(value, low):
                self.report("error", "invalid", path,
                            f"The value is less than the specified minimum value ({low})", el)
            if isinstance(high, str) and _date_less(high, value):
                self.report("error", "invalid", path,
                            f"The value is greater than the specified maximum value ({high})",
                            el)

    def fixed(self, el: Element, value: Any, expected: Any, path: str, exact: bool) -> None:
        if _matches(value, expected, exact):
            return
        problem = _compare(value, expected, exact, path)
        if problem is not None:
            where, text = problem
            kind = "fixed value" if exact else "pattern"
            self.report("error", "value", where, f"{text} (the {kind} of {el.path})", el)

    def invariants(self, el: Element, focus: Any, path: str, frame: Frame,
                   owner: Element | None = None, base: str | None = None) -> None:
        if not el.invariants:
            return
        if base is None:
            base = el.fhirpath_base
        cache = self._invariant_results
        for inv in el.invariants:
            if type(focus) is dict and not inv.native:
                # The same invariant on the same node comes again with every profile that
                # includes the base definition: evaluate once (native ones are cheaper to
                # evaluate again; issues are de-duplicated by `report`).
                key = (id(focus), inv.key, inv.expression)
                outcome = cache.get(key, _MISSING)
                if outcome is _MISSING:
                    outcome = cache[key] = inv.evaluate(focus, frame.scope, base)
            else:
                outcome = inv.evaluate(focus, frame.scope, base)
            if outcome is False:
                where = path
                if inv.key == "dom-3" and isinstance(focus, dict):
                    for i in unreferenced_contained(focus):
                        self.report(inv.severity, "invariant", f"{path}.contained[{i}]",
                                    f"Constraint failed: {inv.key}: '{inv.human}'",
                                    owner or el)
                    continue
                self.report(inv.severity, "invariant", where,
                            f"Constraint failed: {inv.key}: '{inv.human}'", owner or el)

    def type_profile(self, url: str, t: TypeRef, value: Any, path: str, frame: Frame) -> None:
        try:
            profile = self.compiler.profile(url)
        except CompileError as exc:
            self.report("warning", "not-supported", path, f"Profile {url} is unusable: {exc}")
            return
        if profile is None:
            self.report("warning", "not-found", path,
                        f"Profile {url} for type {t.code} could not be found")
            return
        if profile.derivation != "constraint":
            return
        struct = profile.root.own_structure()
        if struct is not None:
            self.complex(value, struct, path, frame, t.code, profile.root)
        self.invariants(profile.root, value, path, frame)
        root = profile.root
        if root.fixed is not None:
            self.fixed(root, value, root.fixed, path, exact=True)
        elif root.pattern is not None:
            self.fixed(root, value, root.pattern, path, exact=False)

    def _content_reference(self, el: Element) -> Element | None:
        ref = el.content_reference or ""
        target_id = ref.partition("#")[2]
        hit = el.profile.by_id.get(target_id)
        if hit is None:
            for candidate in el.profile.by_id.values():
                if candidate.path == target_id and candidate.slice_name is None:
                    return candidate
            base = self.compiler.datatype(target_id.split(".")[0])
            if base is not None:
                return base.by_id.get(target_id)
        return hit

    # -- extensions ----------------------------------------------------------------------------

    def extensions(self, el: Element, items: list, frame: Frame, host_type: str,
                   host_path: str, owner: Element | None) -> None:
        modifier = el.name == "modifierExtension"
        slices = el.slices if el.slicing is not None else []
        counts: dict[int, int] = {}
        for value, _ext, _t, path in items:
            if not isinstance(value, dict):
                self.report("error", "structure", path, "An extension must be a JSON object", el)
                continue
            url = value.get("url")
            if not isinstance(url, str) or not url:
                self.report("error", "required", path,
                            "Extension.url is required in order to identify, use and validate "
                            "the extension", el)
                continue
            if not ext1_holds(value):
                self.report("error", "invariant", path,
                            "Constraint failed: ext-1: 'Must have either extensions or value[x], "
                            "not both'", el)
            matched = None
            for s in slices:
                if url in _slice_urls(s):
                    matched = s
                    break
            if matched is not None:
                counts[id(matched)] = counts.get(id(matched), 0) + 1
            self.v.extension(self, matched or el, value, url, path, frame, host_type, host_path,
                             modifier, bool(matched), owner)
        for s in slices:
            n = counts.get(id(s), 0)
            if n < s.min:
                self.report("error", "structure", f"{host_path}.{el.name}",
                            f"Slice '{s.id}': minimum required = {s.min}, but only found {n}", s)
            if n > s.max:
                self.report("error", "structure", f"{host_path}.{el.name}",
                            f"Slice '{s.id}': max allowed = {s.max}, but found {n}", s)
        if el.slicing is not None and el.slicing.rules == "closed":
            allowed = {u for s in slices for u in _slice_urls(s)}
            for value, _ext, _t, path in items:
                if isinstance(value, dict) and value.get("url") not in allowed:
                    self.report("error", "structure", path,
                                "This extension does not match any slice, and slicing is closed",
                                el)

    # -- slicing -------------------------------------------------------------------------------

    def slice(self, el: Element, items: list, frame: Frame, base_path: str) -> list[Element]:
        """Assign each repetition to a slice; check slice cardinality, closed and ordered."""
        slicing = el.slicing
        assert slicing is not None
        targets: list[Element] = []
        positions: list[int] = []
        for value, _ext, t, path in items:
            found = -1
            for i, s in enumerate(el.slices):
                if self.v.slice_matches(self, el, s, value, t, frame):
                    found = i
                    break
            positions.append(found)
            if found < 0:
                targets.append(el)
                if slicing.rules == "closed":
                    self.report("error", "structure", path,
                                "This element does not match any known slice defined in the "
                                "profile and slicing is CLOSED", el)
            else:
                targets.append(el.slices[found])
        for i, s in enumerate(el.slices):
            n = positions.count(i)
            if n < s.min:
                self.report("error", "structure", base_path,
                            f"Slice '{s.id}': a matching slice is required, but not found "
                            f"(minimum required = {s.min}, found {n})", s)
            if n > s.max:
                self.report("error", "structure", base_path,
                            f"Slice '{s.id}': max allowed = {s.max}, but found {n}", s)
        if slicing.ordered:
            last = -1
            for pos, (_v, _x, _t, path) in zip(positions, items, strict=True):
                if pos >= 0:
                    if pos < last:
                        self.report("error", "structure", path,
                                    "As specified by profile, elements must be in the same order "
                                    "as the slices", el)
                    last = pos
        if slicing.rules == "openAtEnd":
            seen_unmatched = False
            for pos, (_v, _x, _t, path) in zip(positions, items, strict=True):
                if pos < 0:
                    seen_unmatched = True
                elif seen_unmatched:
                    self.report("error", "structure", path,
                                "Slicing is openAtEnd: elements that match no slice must come "
                                "after all sliced elements", el)
        # Re-slicing: a slice with its own slices.
        out = list(targets)
        for i, s in enumerate(el.slices):
            if s.slicing is not None and s.slices:
                idx = [k for k, p in enumerate(positions) if p == i]
                sub = self.slice(s, [items[k] for k in idx], frame, base_path)
                for k, target in zip(idx, sub, strict=True):
                    out[k] = target
        return out


def _prof(el: Element | None) -> CompiledProfile | None:
    return el.profile if el is not None else None


def _type_in(target: Element, t: TypeRef) -> TypeRef:
    """The slice's own TypeRef for the same type (it may add profiles)."""
    for candidate in target.types:
        if candidate.code == t.code:
            return candidate
    return target.types[0] if len(target.types) == 1 else t


def _slice_urls(s: Element) -> set[str]:
    urls: set[str] = set()
    for t in s.types:
        urls.update(t.profiles)
    for c in s.children:
        if c.name == "url" and isinstance(c.fixed, str):
            urls.add(c.fixed)
    return {u.partition("|")[0] for u in urls} | urls


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "JSON array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _primitive_equal(value: Any, expected: Any) -> bool:
    if type(value) is str and type(expected) is str:  # codes and systems: the usual case
        return value == expected
    if isinstance(value, bool) or isinstance(expected, bool):
        return value is expected
    if isinstance(value, int | float | Decimal) and isinstance(expected, int | float | Decimal):
        return Decimal(str(value)) == Decimal(str(expected))
    return bool(value == expected)


def _compare(value: Any, expected: Any, exact: bool, path: str) -> tuple[str, str] | None:
    """Where and why `value` does not match a fixed value (exact) or pattern."""
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return path, "Value does not match: an object is required"
        for key, exp in expected.items():
            if key not in value:
                return f"{path}.{key}", "Missing element required by the profile"
            problem = _compare(value[key], exp, exact, f"{path}.{key}")
            if problem is not None:
                return problem
        if exact:
            for key in value:
                if key not in expected and key not in ("id", "extension"):
                    return f"{path}.{key}", (f"The element {key} is present in the instance but "
                                             "not allowed in the applicable fixed value")
        return None
    if isinstance(expected, list):
        if not isinstance(value, list):
            return path, "Value does not match: an array is required"
        if exact and len(value) != len(expected):
            return path, "Value does not match: the number of items differs"
        for i, exp in enumerate(expected):
            if exact:
                problem = _compare(value[i], exp, True, f"{path}[{i}]")
                if problem is not None:
                    return problem
            elif not any(_compare(v, exp, False, path) is None for v in value):
                return path, "No item matches the required pattern"
        return None
    if not _primitive_equal(value, expected):
        return path, "Value does not match"
    return None


def _matches(value: Any, expected: Any, exact: bool) -> bool:
    """`_compare(value, expected, exact, path) is None`, without building the paths a
    mismatch would be reported at (values mostly match: slice discriminators, fixed codes)."""
    if type(expected) is str:
        return value == expected if type(value) is str else _primitive_equal(value, expected)
    if isinstance(expected, dict):
        if not isinstance(value, dict):
            return False
        for key, exp in expected.items():
            if key not in value or not _matches(value[key], exp, exact):
                return False
        if exact:
            for key in value:
                if key not in expected and key not in ("id", "extension"):
                    return False
        return True
    if isinstance(expected, list):
        if not isinstance(value, list):
            return False
        if exact and len(value) != len(expected):
            return False
        for i, exp in enumerate(expected):
            if exact:
                if not _matches(value[i], exp, True):
                    return False
            elif not any(_matches(v, exp, False) for v in value):
                return False
        return True
    return _primitive_equal(value, expected)


def matches_pattern(value: Any, expected: Any, exact: bool = False) -> bool:
    return _matches(value, expected, exact)


def _relative_date(duration: Any, sign: int) -> str | None:
    """Today minus (sign -1) or plus (sign 1) a UCUM Duration, as an ISO date."""
    import datetime

    if not isinstance(duration, dict) or not isinstance(duration.get("value"), int | float):
        return None
    amount = float(duration["value"]) * sign
    days = {"a": 365.25, "mo": 30.4375, "wk": 7.0, "d": 1.0, "h": 1 / 24, "min": 1 / 1440,
            "s": 1 / 86400}.get(str(duration.get("code")))
    if days is None:
        return None
    when = datetime.date.today() + datetime.timedelta(days=amount * days)
    return when.isoformat()


def _date_less(a: str, b: str) -> bool:
    """Compare two FHIR date/dateTime/time strings on their common precision."""
    n = min(len(a), len(b))
    return a[:n] < b[:n]


Matcher = Callable[[Any, TypeRef, Frame], bool]

__all__ = ["UNBOUNDED", "BundleIndex", "Frame", "Walk", "matches_pattern"]
