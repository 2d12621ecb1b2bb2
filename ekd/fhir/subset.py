"""`_summary` and `_elements` (http://hl7.org/fhir/R4/search.html#summary, #elements).

Summary flags come from the base definitions (`ElementDefinition.isSummary`, carried by the
fhir.resources models) and apply at every level: inside a kept backbone element (say
`Observation.component`) only its summary elements stay. Mandatory elements, `id` and `meta`
are always kept; a subsetted resource is tagged SUBSETTED so nobody mistakes it for the whole
thing (and updates it from the partial copy).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import cache

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.backboneelement import BackboneElement

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@dataclass(frozen=True, slots=True)
class _Flags:
    summary: frozenset[str]
    mandatory: frozenset[str]
    #: Backbone elements by JSON name: their own flags apply inside them.
    backbone: dict[str, type]


def _model_of(annotation: object) -> type | None:
    stack = [annotation]
    while stack:
        current = stack.pop()
        if hasattr(current, "get_model_klass"):
            return current.get_model_klass()  # type: ignore[no-any-return, union-attr]
        stack.extend(typing.get_args(current))
    return None


@cache
def _flags(model: type) -> _Flags:
    summary: set[str] = set()
    mandatory: set[str] = set()
    backbone: dict[str, type] = {}
    for field in model.model_fields.values():  # type: ignore[attr-defined]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        name = field.alias or ""
        if extra.get("summary_element_property"):
            summary.add(name)
        if field.is_required() or extra.get("element_required"):
            mandatory.add(name)
        inner = _model_of(field.annotation)
        if inner is not None and issubclass(inner, BackboneElement):
            backbone[name] = inner
    return _Flags(frozenset(summary), frozenset(mandatory), backbone)


def _resource_flags(rtype: str) -> _Flags | None:
    try:
        return _flags(get_fhir_model_class(rtype))
    except ValueError:
        return None


def _summarise(node: dict, flags: _Flags) -> dict:
    out = {}
    for key, value in node.items():
        plain = key[1:] if key.startswith("_") else key
        if key not in _ALWAYS and plain not in flags.summary and plain not in flags.mandatory:
            continue
        inner = flags.backbone.get(plain)
        if inner is not None and not key.startswith("_"):
            inner_flags = _flags(inner)
            if isinstance(value, list):
                value = [_summarise(v, inner_flags) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _summarise(value, inner_flags)
        out[key] = value
    return out


def _keep(resource: dict, names: frozenset[str] | set[str]) -> dict:
    out = {}
    for key, value in resource.items():
        plain = key[1:] if key.startswith("_") else key
        if key in _ALWAYS or plain in names:
            out[key] = value
    return out


def _tag(resource: dict) -> dict:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    resource["meta"] = meta
    return resource


def summary(resource: dict, mode: str | None) -> dict:
    """Apply `_summary=true|text|data|false` (`count` is handled by search itself)."""
    if mode in (None, "false", "count"):
        return resource
    if mode == "data":
        return _tag({k: v for k, v in resource.items() if k not in ("text", "_text")})
    flags = _resource_flags(resource.get("resourceType", ""))
    if flags is None:
        return resource
    if mode == "true":
        return _tag(_summarise(resource, flags))
    if mode == "text":
        return _tag(_keep(resource, flags.mandatory | {"text"}))
    return resource


def elements(resource: dict, names: list[str] | None) -> dict:
    """Apply `_elements=a,b`: only the named top-level elements (plus mandatory ones)."""
    if not names:
        return resource
    rtype = resource.get("resourceType", "")
    wanted = {n.split(".", 1)[-1] if n.startswith(rtype + ".") else n for n in names}
    wanted = {n.split(".", 1)[0] for n in wanted}
    flags = _resource_flags(rtype)
    return _tag(_keep(resource, wanted | (flags.mandatory if flags else frozenset())))


def apply(resource: dict, summary_mode: str | None, names: list[str] | None) -> dict:
    """`_summary` then `_elements`, as read and search both need them."""
    return elements(summary(resource, summary_mode), names)
