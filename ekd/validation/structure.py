"""Structural validation against the base R4 resource definitions, via `fhir.resources` models.

Catches unknown elements, wrong data types, bad primitive formats and missing mandatory elements.
pydantic's error locations are turned into FHIRPath expressions (`Patient.name[0].family`).
Input values are never echoed into messages: they may be a BSN or clinical data.
"""

from __future__ import annotations

import re
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

    def validate(self, resource: dict, profiles: Sequence[str] = ()) -> list[Issue]:
        """Base definitions only: `profiles` and `meta.profile` are not looked at."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("error", "structure", "Missing resourceType", ())]
        try:
            model = get_fhir_model_class(rtype)
        except ValueError:
            return [Issue("error", "not-supported", f"Unknown resource type '{rtype}'", ())]
        resource, value_elements = _split_extension_value_elements(resource)
        issues = _validate(model, resource, rtype, ())
        for loc, element in value_elements:
            issues += _validate(_element_model(), element, rtype, loc)
        return issues


def _validate(model: type, data: dict, rtype: str, prefix: tuple) -> list[Issue]:
    try:
        model.model_validate(data)  # type: ignore[attr-defined]
    except ValidationError as exc:
        issues = []
        for err in exc.errors(include_url=False):
            if _false_pattern_mismatch(err):
                continue
            loc = [*prefix, *(s for s in err.get("loc", ()) if not _is_internal(s))]
            path = fhirpath(rtype, loc)
            code = "structure" if err.get("type") == "extra_forbidden" else "value"
            if err.get("type") == "missing":
                code = "required"
            issues.append(Issue("error", code, f"{path}: {_message(err)}", (path,)))
        return issues
    except (TypeError, ValueError) as exc:  # model-level validators raising directly
        return [Issue("error", "invalid", f"{rtype}: {exc}", (rtype,))]
    return []


def _false_pattern_mismatch(err: dict) -> bool:
    """FHIR's regexes use XML Schema's `\\s` (space, tab, CR, LF); Python's `re` reads `\\s` as
    any Unicode space, so a code such as "A\\u00a0B" is rejected although FHIR allows it.
    Re-check such a mismatch with ASCII semantics. (The value is only compared, never echoed.)"""
    if err.get("type") != "string_pattern_mismatch":
        return False
    pattern = (err.get("ctx") or {}).get("pattern")
    value = err.get("input")
    if not isinstance(pattern, str) or not isinstance(value, str):
        return False
    return re.fullmatch(pattern, value, flags=re.ASCII) is not None


def _element_model() -> type:
    from fhir.resources.R4B.element import Element

    return Element


def _split_extension_value_elements(
    resource: dict,
) -> tuple[dict, list[tuple[tuple, dict]]]:
    """Take `_valueX` (id/extensions of an extension's primitive value) out of extensions.

    R4 allows them (http://hl7.org/fhir/R4/json.html#primitive) but the fhir.resources R4B
    Extension model has no such fields (upstream nazrulworld/fhir.resources#204). They are
    validated separately as Elements; the resource is copied only when it has any.
    """
    found: list[tuple[tuple, dict, str]] = []
    stack: list[tuple[object, tuple]] = [(resource, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("_value") and "url" in node and isinstance(value, dict):
                    found.append((loc, node, key))
                elif isinstance(value, dict | list):
                    stack.append((value, (*loc, key)))
        elif isinstance(node, list):
            stack.extend((v, (*loc, i)) for i, v in enumerate(node) if isinstance(v, dict | list))
    if not found:
        return resource, []
    import copy

    clean = copy.deepcopy(resource)
    elements: list[tuple[tuple, dict]] = []
    for loc, _node, key in found:
        target: object = clean
        for step in loc:
            target = target[step]  # type: ignore[index]
        assert isinstance(target, dict)
        elements.append(((*loc, key), target.pop(key)))
    return clean, elements


def _is_internal(step: object) -> bool:
    # pydantic inserts union member / validator names into locations; they are not FHIR paths.
    return isinstance(step, str) and (step.endswith("]") or step.startswith("function-"))
