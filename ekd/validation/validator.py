"""`ProfileValidator`: StructureDefinition-driven validation of FHIR R4 resources (JSON).

    validator = ProfileValidator(registry, TerminologyService(registry))
    issues = validator.validate(resource)                 # base type + meta.profile
    issues = validator.validate(resource, profiles=[url]) # ... + these profiles

A resource is checked against the base definition of its type, every `meta.profile` the
registry knows (an unknown one is a warning, as in the Java validator), the profiles passed in,
the global profiles of ImplementationGuides in the registry, and - for Observations with a
vital-sign LOINC code - the core vital signs profile the R4 specification requires. Nested
resources (contained, Bundle entries, Parameters) are checked the same way.

Compiled profiles are cached and shared between threads; any change of a StructureDefinition,
ValueSet, CodeSystem or ImplementationGuide in the registry drops the caches.

Terminology goes through `TerminologyService.validate_code`; an answer of `valid=None` or a
`NotImplementedError` means "not checked" and is never reported as a problem.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from ekd.definitions.registry import CANONICAL_TYPES, Registry
from ekd.errors import Issue
from ekd.validation.compiled import (
    CompiledProfile,
    CompileError,
    Compiler,
    Element,
    TypeRef,
)
from ekd.validation.enums import codes_from_short, required_codes
from ekd.validation.snapshot import SnapshotError
from ekd.validation.walker import (
    _ABSOLUTE,
    _ABSOLUTE_REF,
    _RELATIVE_REF,
    BundleIndex,
    Frame,
    Walk,
    matches_pattern,
)

log = logging.getLogger("ekd.validation")

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
_UUID = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")

#: LOINC codes whose Observations SHALL conform to a core vital signs profile (R4 §8.4).
VITAL_SIGNS = {
    "85353-1": "vitalspanel", "9279-1": "resprate", "8867-4": "heartrate",
    "2708-6": "oxygensat", "59408-5": "oxygensat", "8310-5": "bodytemp", "8302-2": "bodyheight",
    "9843-4": "headcircum", "29463-7": "bodyweight", "39156-5": "bmi", "85354-9": "bp",
}

#: SNOMED CT codes the Java validator treats as the vital sign (body temperature).
VITAL_SIGNS_SNOMED = {"276885007": "bodytemp"}

#: Canonical prefix of the core extensions (R4's own and the later extensions pack).
CORE_EXTENSIONS = "http://hl7.org/fhir/StructureDefinition/"

_FORBIDDEN_XHTML = frozenset({"script", "style", "form", "input", "iframe", "object", "embed",
                              "applet", "base", "link", "meta", "frame", "frameset", "button",
                              "select", "textarea", "head", "body", "html", "title"})

_UCUM_PREFIX = {"": Decimal(1), "k": Decimal(1000), "h": Decimal(100), "da": Decimal(10),
                "d": Decimal("0.1"), "c": Decimal("0.01"), "m": Decimal("0.001"),
                "u": Decimal("0.000001"), "n": Decimal("0.000000001")}
_UCUM_TIME = {"s": Decimal(1), "min": Decimal(60), "h": Decimal(3600), "d": Decimal(86400),
              "wk": Decimal(604800), "mo": Decimal("2629800"), "a": Decimal("31557600")}


class ProfileValidator:
    """Validator protocol implementation (`ekd.validation.Validator`), safe to share."""

    def __init__(
        self,
        registry: Registry,
        terminology: Any = None,
        *,
        unknown_extensions: str = "error",
        vital_signs: bool = True,
        resolve_canonical: Callable[[str, str], dict | None] | None = None,
        implementation_guides: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.terminology = terminology
        #: Finds canonical resources the registry does not index (Questionnaire, in R4
        #: `Registry.CANONICAL_TYPES` has no Questionnaire): (canonical, type) -> resource.
        self.resolve_canonical = resolve_canonical
        #: ImplementationGuides (canonical urls) whose `global` profiles apply to every
        #: resource of their type. Only these: the R4 package alone holds example IGs with
        #: global profiles that must not apply to everything.
        self.implementation_guides = tuple(implementation_guides)
        self.compiler = Compiler(registry)
        #: Severity for extensions whose definition is not in the registry (modifier
        #: extensions are always errors). "error" is the Java validator's default.
        self.unknown_extensions = unknown_extensions
        self.vital_signs = vital_signs
        self._lock = threading.Lock()
        self._tx: dict[tuple, Any] = {}
        self._systems: dict[str, str | None] = {}
        self._globals: dict[str, list[str]] | None = None
        registry.subscribe(self._changed)

    def _changed(self, resource: dict) -> None:
        if resource.get("resourceType") in ("ValueSet", "CodeSystem", "StructureDefinition",
                                            "ImplementationGuide"):
            with self._lock:
                self._tx = {}
                self._systems = {}
                self._globals = None

    # -- entry point ---------------------------------------------------------------------------

    def validate(self, resource: dict, profiles: Iterable[str] = ()) -> list[Issue]:
        if not isinstance(resource, dict):
            return [Issue("fatal", "structure", "The content is not a JSON object", ())]
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("fatal", "structure", "Missing resourceType", ())]
        walk = Walk(self, resource)
        frame = Frame(resource, resource, rtype)
        if rtype == "Bundle":
            frame.bundle = BundleIndex.of(resource)
        compiled = self.profiles_for(walk, resource, rtype, list(profiles))
        if compiled:
            walk.resource(resource, frame, compiled)
        return walk.issues

    def profiles_for(self, walk: Walk, resource: dict, path: str,
                     extra: list[str]) -> list[CompiledProfile]:
        rtype = str(resource.get("resourceType"))
        try:
            base = self.compiler.profile(rtype)
        except CompileError as exc:
            walk.report("error", "exception", path, str(exc))
            return []
        if base is None or base.kind not in ("resource", "logical"):
            walk.report("error", "structure", path, f"Unknown resource type '{rtype}'")
            return []
        chosen: list[CompiledProfile] = []
        meta = resource.get("meta")
        declared = meta.get("profile") if isinstance(meta, dict) else None
        urls: list[tuple[str, str]] = []
        if isinstance(declared, list):
            urls += [(u, "meta") for u in declared if isinstance(u, str)]
        urls += [(u, "extra") for u in extra]
        if self.implementation_guides:
            urls += [(u, "global") for u in self._global_profiles(rtype)]
        if self.vital_signs and rtype == "Observation":
            urls += [(u, "vital") for u in _vital_profiles(resource)]
        seen: set[str] = set()
        for url, why in urls:
            if url in seen:
                continue
            seen.add(url)
            try:
                profile = self.compiler.profile(url)
            except CompileError as exc:
                walk.report("error", "exception", path,
                            f"Profile {url} cannot be used: {exc}")
                continue
            if profile is None:
                if why == "vital":
                    continue  # implied by the code, not asked for: nothing to report
                if why == "extra":
                    walk.report("error", "not-found", path, f"Unknown profile {url}")
                else:
                    walk.report("warning", "not-found", path,
                                f"Profile reference '{url}' has not been checked because it "
                                "could not be found")
                continue
            if profile.type != rtype:
                walk.report("error", "invalid", path,
                            f"Profile {url} is for type {profile.type}, not {rtype}")
                continue
            chosen.append(profile)
        return chosen or [base]

    def _global_profiles(self, rtype: str) -> list[str]:
        globals_ = self._globals
        if globals_ is None:
            globals_ = {}
            for url in self.implementation_guides:
                ig = self.registry.get(url, "ImplementationGuide")
                for g in (ig or {}).get("global", []):
                    if isinstance(g, dict) and g.get("type") and g.get("profile"):
                        globals_.setdefault(g["type"], []).append(g["profile"])
            self._globals = globals_
        return globals_.get(rtype, [])

    # -- nested resources ----------------------------------------------------------------------

    def nested_resource(self, walk: Walk, value: dict, path: str, frame: Frame, el: Element,
                        t: TypeRef) -> None:
        rtype = value.get("resourceType")
        if not isinstance(rtype, str):
            walk.report("error", "structure", path, "The resource has no resourceType", el)
            return
        contained = el.name == "contained"
        sub = Frame(value, frame.root, path,
                    container=frame.resource if contained else None,
                    full_url=frame.full_url if contained else None,
                    bundle=frame.bundle if contained else None)
        if el.path.endswith("entry.resource") and frame.resource.get("resourceType") == "Bundle":
            sub.bundle = frame.bundle
            sub.full_url = _entry_full_url(frame.resource, path)
        elif el.path.endswith("parameter.resource") or el.path.endswith("entry.resource"):
            sub.bundle = frame.bundle
        if rtype == "Bundle":
            sub.bundle = BundleIndex.of(value)
        allowed = [x.code for x in el.types if x.code not in ("Resource", "DomainResource")]
        if allowed and rtype not in allowed:
            walk.report("error", "structure", path,
                        f"The resource type {rtype} is not allowed here (allowed: "
                        f"{', '.join(allowed)})", el)
        extra = [p for x in el.types for p in x.profiles]
        profiles = self.profiles_for(walk, value, path, extra)
        walk.resource(value, sub, profiles)

    # -- resource-level rules ------------------------------------------------------------------

    def resource_rules(self, walk: Walk, resource: dict, frame: Frame) -> None:
        rid = resource.get("id")
        if rid is not None and (not isinstance(rid, str) or not _ID.fullmatch(rid)):
            why = "Too long" if isinstance(rid, str) and len(rid) > 64 else "Invalid Characters"
            walk.report("error", "invalid", f"{frame.path}.id", f"Invalid Resource id: {why}")
        rtype = resource.get("resourceType")
        if rtype == "Bundle":
            self.bundle_rules(walk, resource, frame)
        elif rtype == "StructureDefinition":
            self.structure_definition_rules(walk, resource, frame)
        elif rtype == "QuestionnaireResponse":
            from ekd.validation.questionnaire import check_response

            check_response(self, walk, resource, frame)

    def structure_definition_rules(self, walk: Walk, sd: dict, frame: Frame) -> None:
        """A profile that cannot be turned into a snapshot is invalid (Java does the same)."""
        if (sd.get("snapshot") or {}).get("element") or not sd.get("differential"):
            return
        if sd.get("baseDefinition") == sd.get("url"):
            return  # self-derived: the Java validator ignores the loop
        try:
            self.compiler.snapshots.elements(sd)
            compiled = self.compiler.compile(sd)
        except SnapshotError as exc:
            where = frame.path
            if exc.element is not None:
                where = f"{frame.path}.differential.element[{exc.element}]"
            walk.report("error", "exception", where, f"Error generating snapshot: {exc}")
            return
        except CompileError as exc:
            walk.report("error", "exception", frame.path, str(exc))
            return
        diff_ids = [e.get("id") for e in (sd.get("differential") or {}).get("element", [])]
        for el in compiled.elements():
            if el.slicing is None or el.id not in diff_ids:
                continue
            for d in el.slicing.discriminators:
                segments = _segments(d.path)
                if _definition_at(self.compiler, el, segments) is None and d.path != "$this":
                    where = f"{frame.path}.differential.element[{diff_ids.index(el.id)}]"
                    walk.report("error", "invalid", f"{where}.slicing.discriminator",
                                f"The discriminator path '{d.path}' does not appear to be valid "
                                f"for the element that is being sliced '{el.path}'")

    def bundle_rules(self, walk: Walk, bundle: dict, frame: Frame) -> None:
        btype = bundle.get("type")
        entries = bundle.get("entry")
        links = bundle.get("link")
        if isinstance(links, list):
            seen: set[str] = set()
            for i, link in enumerate(links):
                rel = link.get("relation") if isinstance(link, dict) else None
                if rel in ("self", "first", "previous", "prev", "next", "last"):
                    if rel in seen:
                        walk.report("error", "invalid", f"{frame.path}.link[{i}]",
                                    f"The link relationship type '{rel}' can only occur once")
                    seen.add(rel)
        if not isinstance(entries, list):
            return
        full_urls: dict[str, int] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            path = f"{frame.path}.entry[{i}]"
            full = entry.get("fullUrl")
            res = entry.get("resource")
            if isinstance(full, str):
                if not _ABSOLUTE.match(full):
                    walk.report("error", "invalid", path,
                                "The fullUrl must be an absolute URL")
                elif isinstance(res, dict) and isinstance(res.get("id"), str) \
                        and not full.startswith("urn:"):
                    m = _ABSOLUTE_REF.match(full)
                    if m and (m.group(3) != res["id"] or m.group(2) != res.get("resourceType")):
                        walk.report("error", "invalid", path,
                                    "The fullUrl does not match the type and id of the resource")
                meta = res.get("meta") if isinstance(res, dict) else None
                # a malformed meta (a list, a string) is reported where meta is walked
                version = meta.get("versionId") if isinstance(meta, dict) else None
                key = f"{full}|{version}"
                if key in full_urls and btype != "history":
                    walk.report("error", "invalid", path,
                                f"Duplicate fullUrl (also in entry[{full_urls[key]}])")
                full_urls.setdefault(key, i)
            if btype == "searchset" and isinstance(res, dict) and "id" not in res:
                walk.report("error", "invalid", f"{path}.resource", "Search results must have ids")

    # -- extensions ----------------------------------------------------------------------------

    def extension(self, walk: Walk, el: Element, value: dict, url: str, path: str,
                  frame: Frame, host_type: str, host_path: str, modifier: bool,
                  by_slice: bool, owner: Element | None = None) -> None:
        profile: CompiledProfile | None = None
        profile_urls = [p for t in el.types for p in t.profiles] if by_slice else []
        if by_slice and not profile_urls:
            # A slice of a complex extension (`Extension.extension:code`): defined inline.
            walk.value(el, el.types[0] if el.types else TypeRef("Extension"), value, None,
                       path, frame)
            return
        if "|" in url:
            walk.report("error", "invalid", path, "The extension URL must not contain a version",
                        el)
        try:
            for candidate in profile_urls or [url]:
                profile = self.compiler.extension(candidate)
                if profile is not None:
                    break
            if profile is None and "|" in url:
                profile = self.compiler.extension(url.partition("|")[0])
        except CompileError as exc:
            walk.report("error", "exception", path,
                        f"The definition of extension {url} cannot be used: {exc}", el)
            return
        if profile is None:
            severity = "error" if modifier else self.unknown_extensions
            if not _ABSOLUTE.match(url):
                severity = "" if owner is not None and owner.path == "Extension" else "error"
            elif url.startswith(CORE_EXTENSIONS) and severity == "error" and not modifier:
                # Core extensions published after R4 (the extensions pack): known to the HL7
                # community, just not to this registry; they cannot be checked.
                severity = "warning"
            if severity:
                walk.report(severity, "structure", path,
                            f"The extension {url} could not be found so is not allowed here", el)
            ext_def = self.compiler.datatype("Extension")
            struct = ext_def.root.own_structure() if ext_def else None
            if struct is not None:
                walk.complex(value, struct, path, frame, "Extension", ext_def.root)
            return
        if profile.type != "Extension":
            walk.report("error", "structure", path,
                        f"{url} is not an extension definition", el)
            return
        root = profile.root
        if modifier != root.is_modifier and profile.derivation == "constraint":
            if modifier:
                walk.report("error", "structure", path,
                            f"Extension {url} is not a modifier extension but is used as one", el)
            else:
                walk.report("error", "structure", path,
                            f"Extension {url} is a modifier extension and must be used as "
                            "modifierExtension", el)
        if not by_slice and profile.contexts:
            self._extension_context(walk, profile, path, frame, host_type, host_path, el, owner)
        struct = root.own_structure()
        if struct is not None:
            walk.complex(value, struct, path, frame, "Extension", root)
        walk.invariants(root, value, path, frame)
        if by_slice and el.children:
            # The profile may constrain the extension further inside its slice.
            own = el.own_structure()
            if own is not None:
                walk.complex(value, own, path, frame, "Extension", el)

    def _extension_context(self, walk: Walk, profile: CompiledProfile, path: str, frame: Frame,
                           host_type: str, host_path: str, el: Element,
                           owner: Element | None) -> None:
        rel = host_path[len(frame.path):]
        definition_path = _definition_path(str(frame.resource.get("resourceType")) + rel)
        candidates = {definition_path, host_type, "Element", "Base"}
        if owner is not None:
            candidates.add(owner.path.replace("[x]", ""))
            candidates.add(owner.path)
            if owner.content_reference:
                # `OperationDefinition.parameter.part` is a `parameter` too.
                candidates.add(owner.content_reference.partition("#")[2])
        if "." not in definition_path:
            candidates |= {"Resource", "DomainResource"}
            if definition_path in CANONICAL_TYPES:
                candidates |= {"CanonicalResource", "MetadataResource"}
        if host_type == "Extension":
            parent = _parent_extension_url(frame.resource, host_path, frame.path)
            if parent:
                candidates.add(parent)
        for kind, expression in profile.contexts:
            expr = expression.replace("[x]", "")
            if kind == "fhirpath":
                return
            if expr in candidates or expression in candidates:
                return
            if kind == "element" and "." not in expr and expr == host_type:
                return
        allowed = ", ".join(f"{k[0]}:{e}" for k, e in profile.contexts)
        # The contexts of R4's own extensions have known errors (fixed in later releases,
        # which the Java validator uses): a mismatch there is only a warning.
        severity = "warning" if profile.url.startswith(CORE_EXTENSIONS) else "error"
        walk.report(severity, "structure", path,
                    f"The extension {profile.url} is not allowed to be used at this point "
                    f"(this element is [{host_type}, {definition_path}]; allowed = {allowed})",
                    el)

    # -- slicing -------------------------------------------------------------------------------

    def slice_matches(self, walk: Walk, sliced: Element, s: Element, value: Any, t: TypeRef,
                      frame: Frame) -> bool:
        assert sliced.slicing is not None
        matchers = s.matcher
        if matchers is None:
            matchers = []
            for d in sliced.slicing.discriminators:
                segments = _segments(d.path)
                definition = _definition_at(self.compiler, s, segments)
                matchers.append((d.type, segments, definition))
            s.matcher = matchers
        for kind, segments, definition in matchers:
            found = _instance_at(self, value, t, segments, frame)
            if kind in ("value", "pattern"):
                if definition is None:
                    return False
                expected, exact = (definition.fixed, True) if definition.fixed is not None \
                    else (definition.pattern, kind == "value" and False)
                if expected is None:
                    if definition.binding_strength == "required" and definition.binding_valueset:
                        if not any(self._in_valueset(definition, v) for v, _ in found):
                            return False
                        continue
                    continue
                if not any(matches_pattern(v, expected, exact) for v, _ in found):
                    return False
            elif kind == "exists":
                if definition is None:
                    continue
                if definition.min >= 1 and not found:
                    return False
                if definition.max == 0 and found:
                    return False
            elif kind == "type":
                if definition is None:
                    continue
                codes = _expected_types(self.compiler, definition, segments)
                if not codes:
                    continue
                if not any(code in codes for _, code in found):
                    return False
            elif kind == "profile":
                if definition is None:
                    continue
                urls = _expected_profiles(definition, segments)
                if not urls:
                    continue
                if not any(self._conforms(walk, v, code, urls, frame) for v, code in found):
                    return False
        return True

    def _in_valueset(self, el: Element, value: Any) -> bool:
        codings: list[tuple[str | None, str]] = []
        if isinstance(value, str):
            codings.append((None, value))
        elif isinstance(value, dict):
            if "coding" in value:
                codings += [(c.get("system"), c.get("code")) for c in value["coding"]
                            if isinstance(c, dict) and isinstance(c.get("code"), str)]
            elif isinstance(value.get("code"), str):
                codings.append((value.get("system"), value["code"]))
        for system, code in codings:
            result = self._check_code(str(el.binding_valueset), system, code, None)
            if result is not None and result.valid:
                return True
        return False

    def _conforms(self, walk: Walk, value: Any, code: str, urls: list[str], frame: Frame) -> bool:
        for url in urls:
            try:
                profile = self.compiler.profile(url)
            except CompileError:
                continue
            if profile is None:
                continue
            before = walk.errors
            walk.muted += 1
            try:
                if isinstance(value, dict) and "resourceType" in value:
                    if value.get("resourceType") != profile.type:
                        continue
                    sub = Frame(value, frame.root, frame.path, bundle=frame.bundle,
                                full_url=frame.full_url)
                    walk.resource(value, sub, [profile])
                else:
                    walk.type_profile(url, TypeRef(code), value, frame.path, frame)
            finally:
                walk.muted -= 1
            if walk.errors == before:
                return True
        return False

    # -- terminology ---------------------------------------------------------------------------

    def _check_code(self, valueset: str, system: str | None, code: str,
                    display: str | None) -> Any:
        if self.terminology is None:
            return None
        key = (valueset, system, code, display)
        tx = self._tx
        if key in tx:
            return tx[key]
        try:
            result = self.terminology.validate_code(valueset, system, code, display)
        except NotImplementedError:
            result = None
        except Exception:  # a terminology failure must not fail the write
            log.exception("terminology check failed for %s", valueset)
            result = None
        if len(tx) > 100_000:
            tx.clear()
        tx[key] = result
        return result

    def _lookup(self, system: str, code: str) -> Any:
        if self.terminology is None:
            return None
        key = ("$lookup", system, code)
        tx = self._tx
        if key in tx:
            return tx[key]
        try:
            result = self.terminology.lookup(system, code)
            result = result if result is not None else False
        except NotImplementedError:
            result = None
        except Exception:
            log.exception("terminology lookup failed for %s", system)
            result = None
        tx[key] = result
        return result

    def _system_kind(self, system: str) -> str | None:
        """'complete' for a CodeSystem the registry has in full, 'valueset' when the system
        is really a ValueSet url, else None."""
        kinds = self._systems
        if system in kinds:
            return kinds[system]
        kind = None
        cs = self.registry.get(system, "CodeSystem")
        if cs is not None:
            kind = "complete" if cs.get("content") == "complete" else None
        elif self.registry.get(system, "ValueSet") is not None:
            kind = "valueset"
        kinds[system] = kind
        return kind

    def codings(self, walk: Walk, el: Element, t: TypeRef, value: dict, path: str) -> None:
        """Codings against the code systems the registry knows, whatever the binding."""
        items = [(value, path)] if t.code == "Coding" else [
            (c, f"{path}.coding[{i}]") for i, c in enumerate(value.get("coding") or [])
            if isinstance(c, dict)]
        for coding, where in items:
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str):
                continue
            if not _ABSOLUTE.match(system):
                walk.report("error", "invalid", f"{where}.system",
                            "Coding.system must be an absolute reference, not a local reference",
                            el)
                continue
            kind = self._system_kind(system)
            if kind == "valueset":
                walk.report("error", "invalid", f"{where}.system",
                            "The Coding references a value set, not a code system", el)
            elif kind == "complete" and isinstance(code, str):
                concept = self._lookup(system, code)
                if concept is False:
                    walk.report("error", "code-invalid", f"{where}.code",
                                f"Unknown code in the CodeSystem {system}", el)
                elif isinstance(concept, dict):
                    _display_check(walk, el, coding, concept.get("display"), where)

    def binding(self, walk: Walk, el: Element, t: TypeRef, value: Any, path: str) -> None:
        strength = el.binding_strength
        vs = str(el.binding_valueset)
        for purpose, extra_vs in el.additional_bindings:
            if purpose == "required":
                self._bound(walk, el, t, value, path, extra_vs, "required", additional=True)
        if strength not in ("required", "extensible"):
            return
        self._bound(walk, el, t, value, path, vs, strength, additional=False)

    def _bound(self, walk: Walk, el: Element, t: TypeRef, value: Any, path: str, vs: str,
               strength: str, additional: bool) -> None:
        severity = "error" if strength == "required" else "warning"
        if len(el.types) > 1 and t.code == "Quantity":
            # A binding on a choice of many types (vital signs' component.value[x]) only
            # really speaks about the coded types; for a Quantity's unit it is advice.
            severity = "warning"
        vs_name = vs.partition("|")[0]
        if t.primitive:
            if not isinstance(value, str):
                return
            result = self._check_code(vs, None, value, None)
            if (result is None or result.valid is None) and strength == "required":
                # An R4 ValueSet no terminology here holds: the codes the specification gives.
                allowed = required_codes(vs)
                if allowed is None:
                    allowed = codes_from_short(el.definition.get("short"))
                if allowed is not None and value not in allowed:
                    walk.report(severity, "code-invalid", path,
                                f"The value provided is not in the value set {vs_name}, and a "
                                "code is required from this value set", el)
                return
            if result is not None and result.valid is False:
                walk.report(severity, "code-invalid", path,
                            f"The value provided is not in the value set {vs_name}"
                            + (", and a code is required from this value set"
                               if severity == "error" else ""), el)
            return
        if not isinstance(value, dict):
            return
        if t.code in ("Coding", "Quantity"):
            codings = [(value, path)]
        elif t.code == "CodeableConcept":
            codings = [(c, f"{path}.coding[{i}]") for i, c in enumerate(value.get("coding") or [])
                       if isinstance(c, dict)]
            if not codings:
                if strength == "required" and not additional:
                    walk.report("error", "code-invalid", path,
                                f"No code provided, and a code is required from the value set "
                                f"{vs_name}", el)
                return
        else:
            return
        outcomes = []
        for coding, where in codings:
            code = coding.get("code")
            if not isinstance(code, str):
                continue
            system = coding.get("system")
            display = coding.get("display") if t.code != "Quantity" else None
            result = self._check_code(vs, system if isinstance(system, str) else None, code,
                                      display if isinstance(display, str) else None)
            outcomes.append(None if result is None else result.valid)
            if result is not None and result.valid and isinstance(display, str):
                _display_check(walk, el, coding, result.display, where)
        if outcomes and all(o is False for o in outcomes):
            what = "None of the codings provided are" if len(outcomes) > 1 else \
                "The code provided is"
            walk.report(severity, "code-invalid", path,
                        f"{what} not in the value set {vs_name}"
                        + (" (additional binding)" if additional else "")
                        + (", and a code from this value set is required"
                           if severity == "error" else ""), el)

    # -- references ----------------------------------------------------------------------------

    def reference(self, walk: Walk, el: Element, t: TypeRef, value: dict, path: str,
                  frame: Frame) -> None:
        ref = value.get("reference")
        declared = value.get("type")
        target: dict | None = None
        target_type: str | None = None
        where = f"{path}.reference"
        if isinstance(ref, str):
            if ref.startswith("#"):
                holder = frame.container or frame.resource
                if ref == "#":
                    target = holder
                else:
                    for c in holder.get("contained") or []:
                        if isinstance(c, dict) and c.get("id") == ref[1:]:
                            target = c
                            break
                    if target is None:
                        walk.report("error", "structure", where,
                                    "Unable to resolve the contained resource this reference "
                                    "points to", el)
            else:
                m = _RELATIVE_REF.match(ref)
                absolute = _ABSOLUTE.match(ref) is not None
                if m is not None:
                    target_type = m.group(1)
                    if target_type not in self.compiler.resource_types():
                        walk.report("error", "invalid", where,
                                    f"Unknown resource type '{target_type}' in the reference", el)
                        target_type = None
                elif ref.startswith("urn:uuid:"):
                    if not _UUID.fullmatch(ref):
                        walk.report("warning", "invalid", where, "Invalid urn:uuid reference", el)
                elif any(c.isspace() for c in ref):
                    walk.report("error", "invalid", where, "The reference is not a valid "
                                "reference (it contains whitespace)", el)
                elif absolute:
                    am = _ABSOLUTE_REF.match(ref)
                    if am and am.group(2) in self.compiler.resource_types():
                        target_type = am.group(2)
                else:
                    walk.report("error", "invalid", where,
                                "Relative URLs must be of the format [ResourceName]/[id]", el)
                if frame.bundle is not None:
                    target = frame.bundle.resolve(ref, frame.full_url)
                    if target is None:
                        self._unresolved_in_bundle(walk, el, ref, where, frame, m is not None)
        elif ref is not None:
            walk.report("error", "structure", where, "Reference.reference must be a string", el)
        if target is not None:
            target_type = str(target.get("resourceType"))
        if isinstance(declared, str) and target_type and declared != target_type:
            walk.report("error", "structure", path,
                        f"The reference type '{declared}' does not match the type of the "
                        f"target ({target_type})", el)
        target_type = target_type or (declared if isinstance(declared, str) else None)
        allowed = t.target_types
        if allowed is not None and target_type and target_type not in allowed:
            walk.report("error", "structure", path,
                        f"The type '{target_type}' implied by the reference is not a valid "
                        f"target for this element (must be one of [{', '.join(sorted(allowed))}])",
                        el)
            return
        if target is not None and t.target_profiles and target is not frame.resource:
            self._target_profiles(walk, el, t, target, path, frame)

    def _unresolved_in_bundle(self, walk: Walk, el: Element, ref: str, where: str, frame: Frame,
                              relative: bool) -> None:
        bundle = frame.bundle
        assert bundle is not None
        if ref.startswith(("urn:uuid:", "urn:oid:")):
            severity = "error" if bundle.type in ("transaction", "batch") else "warning"
            walk.report(severity, "not-found", where,
                        "The reference is a urn: that does not resolve within the Bundle", el)
        elif relative and bundle.type == "document":
            walk.report("error", "not-found", where,
                        "Can't find the referenced resource in the document Bundle", el)

    def _target_profiles(self, walk: Walk, el: Element, t: TypeRef, target: dict, path: str,
                         frame: Frame) -> None:
        urls = []
        for url in t.target_profiles:
            try:
                p = self.compiler.profile(url)
            except CompileError:
                continue
            if p is None or p.derivation != "constraint":
                return  # a base type is among the choices: the type check above is enough
            urls.append(url)
        if not urls or getattr(walk, "_depth", 0) > 3:
            return
        walk._depth = getattr(walk, "_depth", 0) + 1  # type: ignore[attr-defined]
        try:
            ok = self._conforms(walk, target, str(target.get("resourceType")), urls, frame)
        finally:
            walk._depth -= 1  # type: ignore[attr-defined]
        if not ok:
            walk.report("error", "structure", path,
                        "The referenced resource does not conform to any of the target "
                        f"profiles ({', '.join(urls)})", el)

    # -- other types ---------------------------------------------------------------------------

    def narrative(self, walk: Walk, el: Element, value: dict, path: str, frame: Frame) -> None:
        div = value.get("div")
        if not isinstance(div, str):
            return
        from lxml import etree

        try:
            root = etree.fromstring(div.encode("utf-8"))
        except (etree.XMLSyntaxError, ValueError):
            walk.report("error", "invalid", f"{path}.div",
                        "The narrative is not well-formed XHTML", el)
            return
        if root.tag != "{http://www.w3.org/1999/xhtml}div":
            walk.report("error", "invalid", f"{path}.div",
                        "The narrative must be a <div> in the XHTML namespace", el)
        for node in root.iter():
            if not isinstance(node.tag, str):
                continue
            local = etree.QName(node).localname
            if local in _FORBIDDEN_XHTML:
                walk.report("error", "invalid", f"{path}.div",
                            f"The narrative contains the element <{local}>, which is not allowed",
                            el)
            for attr in node.attrib:
                name = etree.QName(attr).localname if attr.startswith("{") else attr
                if name.lower().startswith("on"):
                    walk.report("error", "invalid", f"{path}.div",
                                "The narrative contains an event handler attribute", el)

    def quantity_range(self, walk: Walk, el: Element, value: dict, path: str) -> None:
        number = value.get("value")
        if not isinstance(number, int | float) or isinstance(number, bool):
            return
        amount = Decimal(str(number))
        for bound, is_min in ((el.min_value, True), (el.max_value, False)):
            if not isinstance(bound, dict) or not isinstance(bound.get("value"), int | float):
                continue
            limit = Decimal(str(bound["value"]))
            mine = _to_base(amount, value.get("code"), value.get("system"))
            theirs = _to_base(limit, bound.get("code"), bound.get("system"))
            if mine is None or theirs is None or mine[1] != theirs[1]:
                if value.get("code") != bound.get("code"):
                    walk.report("warning", "invalid", path,
                                "The value cannot be compared to the limit in the profile "
                                "(different or unknown units)", el)
                    continue
                mine, theirs = (amount, ""), (limit, "")
            if is_min and mine[0] < theirs[0]:
                walk.report("error", "invalid", path,
                            "The value in the instance is less than the specified minimum value",
                            el)
            if not is_min and mine[0] > theirs[0]:
                walk.report("error", "invalid", path,
                            "The value in the instance is greater than the specified maximum "
                            "value", el)


# -- helpers -----------------------------------------------------------------------------------


def _display_check(walk: Walk, el: Element, coding: dict, expected: Any, where: str) -> None:
    display = coding.get("display")
    if not isinstance(display, str) or not isinstance(expected, str):
        return
    if " ".join(display.split()).lower() != " ".join(expected.split()).lower():
        walk.report("warning", "invalid", f"{where}.display",
                    "Wrong display name for the code (the code system gives another display)",
                    el)


def _to_base(amount: Decimal, code: Any, system: Any) -> tuple[Decimal, str] | None:
    """UCUM units with a metric prefix (or a time unit) as (amount in base unit, base unit)."""
    if system not in (None, "http://unitsofmeasure.org") or not isinstance(code, str):
        return None
    if code in _UCUM_TIME:
        return amount * _UCUM_TIME[code], "s"
    for base in ("g", "m", "L", "l", "s", "mol", "Pa"):
        if code.endswith(base):
            prefix = code[: -len(base)]
            if prefix in _UCUM_PREFIX:
                return amount * _UCUM_PREFIX[prefix], base.lower()
    return None


def _vital_profiles(resource: dict) -> list[str]:
    code = resource.get("code")
    if not isinstance(code, dict):
        return []
    out = []
    for c in code.get("coding") or []:
        if not isinstance(c, dict):
            continue
        name = None
        if c.get("system") == "http://loinc.org":
            name = VITAL_SIGNS.get(str(c.get("code")))
        elif c.get("system") == "http://snomed.info/sct":
            name = VITAL_SIGNS_SNOMED.get(str(c.get("code")))
        if name:
            out.append(f"http://hl7.org/fhir/StructureDefinition/{name}")
    return out


def _entry_full_url(bundle: dict, path: str) -> str | None:
    m = re.search(r"\.entry\[(\d+)\]\.resource$", path)
    if m is None:
        return None
    entries = bundle.get("entry") or []
    i = int(m.group(1))
    if i < len(entries) and isinstance(entries[i], dict):
        full = entries[i].get("fullUrl")
        return full if isinstance(full, str) else None
    return None


_INDEX = re.compile(r"\[\d+\]|\.ofType\([^)]*\)")


def _definition_path(instance_path: str) -> str:
    return _INDEX.sub("", instance_path)


def _parent_extension_url(resource: dict, host_path: str, prefix: str) -> str | None:
    node: Any = resource
    rel = host_path[len(prefix):]
    for part in re.findall(r"\.([A-Za-z0-9_]+)(?:\[(\d+)\])?", rel):
        name, index = part
        if not isinstance(node, dict):
            return None
        node = node.get(name)
        if index:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) \
                else None
    if isinstance(node, dict) and isinstance(node.get("url"), str):
        return node["url"]
    return None


_SEGMENT = re.compile(r"""extension\(\s*(['"])(.*?)\1\s*\)|resolve\(\)|ofType\(([^)]*)\)|"""
                      r"""\$this|[A-Za-z0-9_\[\]]+""")


def _segments(path: str) -> list[tuple[str, str]]:
    """A discriminator path as (kind, argument) steps: name, ext, resolve, oftype, this."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(path):
        if path[pos] == ".":
            pos += 1
            continue
        m = _SEGMENT.match(path, pos)
        if m is None:
            out.append(("name", path[pos:]))
            break
        text = m.group(0)
        if text.startswith("extension("):
            out.append(("ext", m.group(2)))
        elif text == "resolve()":
            out.append(("resolve", ""))
        elif text.startswith("ofType("):
            out.append(("oftype", m.group(3).strip()))
        elif text == "$this":
            out.append(("this", ""))
        else:
            out.append(("name", text.replace("[x]", "")))
        pos = m.end()
    return out


def _instance_at(v: ProfileValidator, value: Any, t: TypeRef, segments: list[tuple[str, str]],
                 frame: Frame) -> list[tuple[Any, str]]:
    """The instance values at a discriminator path, with their type codes."""
    current: list[tuple[Any, str]] = [(value, t.code)]
    for kind, arg in segments:
        nxt: list[tuple[Any, str]] = []
        for node, code in current:
            if kind == "this":
                nxt.append((node, code))
            elif kind == "ext":
                for e in (node.get("extension") or []) if isinstance(node, dict) else []:
                    if isinstance(e, dict) and e.get("url") == arg:
                        nxt.append((e, "Extension"))
            elif kind == "resolve":
                target = _resolve(node, frame)
                if target is not None:
                    nxt.append((target, str(target.get("resourceType"))))
            elif kind == "oftype":
                if code == arg or (isinstance(node, dict) and node.get("resourceType") == arg):
                    nxt.append((node, arg))
            elif isinstance(node, dict):
                if arg in node:
                    child = node[arg]
                    child_code = str(child.get("resourceType")) if isinstance(child, dict) and \
                        "resourceType" in child else arg
                    for item in child if isinstance(child, list) else [child]:
                        nxt.append((item, child_code))
                else:
                    for key, child in node.items():
                        if key.startswith(arg) and len(key) > len(arg) and key[len(arg)].isupper():
                            suffix = key[len(arg):]
                            code2 = suffix if suffix[0].isupper() and suffix not in (
                                "String", "Boolean", "Integer", "Decimal", "Code", "Date",
                                "DateTime", "Uri", "Time", "Instant", "Id", "Url", "Canonical",
                                "Markdown", "Oid", "Uuid", "PositiveInt", "UnsignedInt",
                                "Base64Binary") else suffix[0].lower() + suffix[1:]
                            for item in child if isinstance(child, list) else [child]:
                                nxt.append((item, code2))
        current = nxt
    return current


def _resolve(node: Any, frame: Frame) -> dict | None:
    if not isinstance(node, dict):
        return None
    ref = node.get("reference")
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        holder = frame.container or frame.resource
        for c in holder.get("contained") or []:
            if isinstance(c, dict) and c.get("id") == ref[1:]:
                return c
        return None
    if frame.bundle is not None:
        return frame.bundle.resolve(ref, frame.full_url)
    return None


def _children_of(compiler: Compiler, el: Element) -> list[Element]:
    if el.children:
        return el.children
    for t in el.types:
        for url in t.profiles:
            try:
                p = compiler.profile(url)
            except CompileError:
                p = None
            if p is not None:
                return p.root.children
    if len(el.types) == 1:
        dt = compiler.datatype(el.types[0].code)
        if dt is not None:
            return dt.root.children
    return []


def _definition_at(compiler: Compiler, s: Element, segments: list[tuple[str, str]]
                   ) -> Element | None:
    """The element of a slice definition at a discriminator path."""
    current: Element | None = s
    for kind, arg in segments:
        if current is None:
            return None
        if kind in ("this", "oftype"):
            continue
        if kind == "resolve":
            # Stay on the reference element: type/profile discriminators read targetProfile.
            continue
        if kind == "ext":
            found = None
            for c in _children_of(compiler, current):
                if c.name == "extension":
                    for sl in c.slices:
                        if arg in _slice_profile_urls(sl):
                            found = sl
                    if found is None:
                        try:
                            p = compiler.profile(arg)
                        except CompileError:
                            p = None
                        found = p.root if p is not None else None
            current = found
            continue
        found = None
        for c in _children_of(compiler, current):
            if c.name == arg or (c.choice and arg.startswith(c.name)):
                found = c
                break
        current = found
    return current


def _slice_profile_urls(s: Element) -> set[str]:
    return {p for t in s.types for p in t.profiles}


def _expected_types(compiler: Compiler, definition: Element,
                    segments: list[tuple[str, str]]) -> set[str]:
    if any(kind == "resolve" for kind, _ in segments):
        out: set[str] = set()
        for t in definition.types:
            if t.target_types is not None:
                out |= t.target_types
        return out
    codes = {t.code for t in definition.types}
    for t in definition.types:
        for url in t.profiles:
            sd = compiler.registry.get(url, "StructureDefinition")
            if sd is not None and isinstance(sd.get("type"), str):
                codes.add(sd["type"])
    return codes


def _expected_profiles(definition: Element, segments: list[tuple[str, str]]) -> list[str]:
    if any(kind == "resolve" for kind, _ in segments):
        return [p for t in definition.types for p in t.target_profiles]
    return [p for t in definition.types for p in t.profiles]
