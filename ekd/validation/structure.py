"""Structural validation against the base R4 resource definitions, via `fhir.resources` models.

Catches unknown elements, wrong data types, bad primitive formats and missing mandatory elements.
pydantic's error locations are turned into FHIRPath expressions (`Patient.name[0].family`).
Input values are never echoed into messages: they may be a BSN or clinical data.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ekd.errors import Issue

_MESSAGES = {
    "extra_forbidden": "Unknown element",
    "missing": "Missing mandatory element",
}


def fhirpath(resource_type: str, loc: Sequence[str | int]) -> str:
    parts = [resource_type]
    for step in loc:
        if isinstance(step, int):
            parts[-1] += f"[{step}]"
        else:
            if step.startswith("_") and not step.startswith("__"):
                step = step[1:]  # `_birthDate` holds the primitive's id/extension
            parts.append(step)
    return ".".join(parts)


def _message(error: dict) -> str:
    kind = error.get("type", "")
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    msg = str(error.get("msg", "Invalid value"))
    return msg.removeprefix("Value error, ")


class StructureValidator:
    """Validator for the base definitions; stateless and safe to share between threads."""

    def validate(self, resource: dict) -> list[Issue]:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("error", "structure", "Missing resourceType", ())]
        try:
            model = get_fhir_model_class(rtype)
        except ValueError:
            return [Issue("error", "not-supported", f"Unknown resource type '{rtype}'", ())]
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            issues = []
            for err in exc.errors(include_input=False, include_url=False):
                loc = [s for s in err.get("loc", ()) if not _is_internal(s)]
                path = fhirpath(rtype, loc)
                code = "structure" if err.get("type") == "extra_forbidden" else "value"
                if err.get("type") == "missing":
                    code = "required"
                issues.append(Issue("error", code, f"{path}: {_message(err)}", (path,)))
            return issues
        except (TypeError, ValueError) as exc:  # model-level validators raising directly
            return [Issue("error", "invalid", f"{rtype}: {exc}", (rtype,))]
        return []


def _is_internal(step: object) -> bool:
    # pydantic inserts union member / validator names into locations; they are not FHIR paths.
    return isinstance(step, str) and (step.endswith("]") or step.startswith("function-"))
