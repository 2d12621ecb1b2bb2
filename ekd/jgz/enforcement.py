"""Which JGZ profile a written resource must meet, decided by its type and, for Observations,
its code (issue #4: "enforced on write").

Patients, RelatedPersons, EpisodeOfCares, Encounters, Immunizations and Consents always get
their JGZ profile; an Observation gets the JGZ Observation profile whose code it carries, and is
refused when it carries none (a JGZ dossier holds no uncontrolled observations). Other resource
types (organisations, practitioners, provenance, conformance resources) are not controlled here.
The code rules are read from the profiles themselves (fixed system/code in `code.coding` slices,
or a required binding), so a changed profile changes the selection without code changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from ekd.definitions.registry import Registry
from ekd.errors import Issue, ResourceInvalid
from ekd.jgz import profile_url
from ekd.terminology.service import TerminologyService

BY_TYPE = {
    "Patient": "jgz-Patient",
    "RelatedPerson": "jgz-RelatedPerson",
    "EpisodeOfCare": "jgz-EpisodeOfCare",
    "Encounter": "jgz-Encounter",
    "Immunization": "jgz-Immunization",
    "Consent": "jgz-TransferConsent",
}
OBSERVATION_PROFILES = (
    "jgz-BodyHeight", "jgz-BodyWeight", "jgz-HeadCircumference", "jgz-BirthWeight",
    "jgz-GestationalAge", "jgz-VanWiechen", "jgz-HearingScreening", "jgz-VisionScreening",
)


@dataclass(frozen=True, slots=True)
class CodeRule:
    """One coding a profile's `Observation.code` asks for."""

    system: str
    code: str | None  # None: any code of the system (then `valueset` may narrow it)
    valueset: str | None = None


class JgzProfiles:
    def __init__(self, registry: Registry, terminology: TerminologyService) -> None:
        self.registry = registry
        self.terminology = terminology
        self._lock = threading.Lock()
        self._rules: dict[str, list[CodeRule]] | None = None
        #: Observation profiles chosen before, by the (system, code) pairs of the codings: a
        #: dossier holds many observations with the same code, and choosing asks the
        #: terminology service about every rule with a value set. Dropped, like the rules,
        #: whenever a definition the choice reads changes (`_generation` keeps a choice made
        #: during a change out of the cache).
        self._chosen: dict[tuple, tuple[str, ...]] = {}
        self._generation = 0
        registry.subscribe(self._changed)

    def _changed(self, resource: dict) -> None:
        rtype = resource.get("resourceType")
        if rtype in ("StructureDefinition", "ValueSet", "CodeSystem"):
            with self._lock:
                self._generation += 1
                self._chosen = {}
                if rtype == "StructureDefinition":
                    self._rules = None

    def select(self, resource: dict) -> list[str]:
        rtype = resource.get("resourceType")
        if rtype in BY_TYPE:
            return [profile_url(BY_TYPE[rtype])]
        if rtype != "Observation":
            return []
        # Malformed shapes (a list for `code`, a string for `coding`) select nothing: the
        # error below names Observation.code instead of the request failing.
        code = resource.get("code")
        coding = code.get("coding") if isinstance(code, dict) else None
        codings = [c for c in coding if isinstance(c, dict)] if isinstance(coding, list) else []
        key = _codings_key(codings)
        chosen = self._chosen.get(key)
        if chosen is None:
            generation = self._generation
            chosen = self._choose(codings)
            with self._lock:
                if generation == self._generation:
                    if len(self._chosen) > 10_000:
                        self._chosen = {}
                    self._chosen[key] = chosen
        if not chosen:
            message = ("Observation.code: the observation fits none of the JGZ observation "
                       "profiles (" + ", ".join(OBSERVATION_PROFILES) + ")")
            raise ResourceInvalid(message, issues=[
                Issue("error", "business-rule", message, ("Observation.code",))])
        return list(chosen)

    def _choose(self, codings: list[dict]) -> tuple[str, ...]:
        """The profiles the codings fit, exact code matches before value set ones."""
        exact, broad = [], []
        for profile_id, rules in self._observation_rules().items():
            for rule in rules:
                for coding in codings:
                    if coding.get("system") != rule.system:
                        continue
                    if rule.code is not None and coding.get("code") == rule.code:
                        exact.append(profile_url(profile_id))
                    elif rule.code is None and self._in_valueset(rule, coding):
                        broad.append(profile_url(profile_id))
        return tuple(dict.fromkeys(exact or broad))

    def _in_valueset(self, rule: CodeRule, coding: dict) -> bool:
        if rule.valueset is None:
            return True
        code = coding.get("code")
        if not isinstance(code, str):
            return False
        check = self.terminology.validate_code(rule.valueset, rule.system, code)
        return check.valid is not False

    def _observation_rules(self) -> dict[str, list[CodeRule]]:
        with self._lock:
            if self._rules is None:
                self._rules = {pid: _code_rules(self.registry.get(profile_url(pid)))
                               for pid in OBSERVATION_PROFILES}
            return self._rules


def _codings_key(codings: list[dict]) -> tuple:
    """What `_choose` reads of the codings, as a cache key.

    Only string systems and codes can match a rule, so any other value stands as `_OTHER`
    (numbers and booleans would otherwise collide with each other: `1 == True`)."""
    key: list[tuple[Any, Any]] = []
    for c in codings:
        system, code = c.get("system"), c.get("code")
        key.append((system if isinstance(system, str) else _OTHER,
                    code if isinstance(code, str) else _OTHER))
    return tuple(key)


class _Other:
    """A system or code that is not a string: matches no rule."""


_OTHER = _Other()


def _code_rules(profile: dict | None) -> list[CodeRule]:
    """Fixed/pattern codings under `Observation.code` in the profile's differential."""
    if not profile:
        return []
    slices: dict[str, dict[str, object]] = {}
    rules: list[CodeRule] = []
    for element in (profile.get("differential") or {}).get("element", []):
        eid = str(element.get("id", ""))
        if not eid.startswith("Observation.code"):
            continue
        pattern = element.get("patternCodeableConcept")
        if isinstance(pattern, dict):
            rules += [CodeRule(c["system"], c.get("code")) for c in pattern.get("coding", [])
                      if isinstance(c, dict) and c.get("system")]
        pattern_coding = element.get("patternCoding")
        if isinstance(pattern_coding, dict) and pattern_coding.get("system"):
            rules.append(CodeRule(pattern_coding["system"], pattern_coding.get("code")))
        if ":" in eid:
            name = eid.split(":", 1)[1].split(".", 1)[0]
            part = slices.setdefault(name, {})
            if eid.endswith(".system") and "fixedUri" in element:
                part["system"] = element["fixedUri"]
            if eid.endswith(".code"):
                if "fixedCode" in element:
                    part["code"] = element["fixedCode"]
                binding = element.get("binding") or {}
                if binding.get("strength") == "required" and binding.get("valueSet"):
                    part["valueset"] = binding["valueSet"]
    for part in slices.values():
        if isinstance(part.get("system"), str):
            rules.append(CodeRule(str(part["system"]), part.get("code"),  # type: ignore[arg-type]
                                  part.get("valueset")))  # type: ignore[arg-type]
    return rules
