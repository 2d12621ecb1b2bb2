"""`_summary` and `_elements` (http://hl7.org/fhir/R4/search.html#summary, #elements).

Subsetting works on top-level elements, using the summary flags of the base definitions
(`ElementDefinition.isSummary`, carried by the fhir.resources models). Mandatory elements, `id`
and `meta` are always kept; a subsetted resource is tagged SUBSETTED so nobody mistakes it for
the whole thing (and updates it from the partial copy).
"""

from __future__ import annotations

from functools import cache

from fhir.resources.R4B import get_fhir_model_class

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _flags(rtype: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary elements, mandatory elements) of a resource type, by JSON name."""
    try:
        model = get_fhir_model_class(rtype)
    except ValueError:
        return frozenset(), frozenset()
    summary: set[str] = set()
    mandatory: set[str] = set()
    for field in model.model_fields.values():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        name = field.alias or ""
        if extra.get("summary_element_property"):
            summary.add(name)
        if field.is_required() or extra.get("element_required"):
            mandatory.add(name)
    return frozenset(summary), frozenset(mandatory)


def _keep(resource: dict, names: frozenset[str] | set[str]) -> dict:
    out = {}
    for key, value in resource.items():
        plain = key[1:] if key.startswith("_") else key
        if key in _ALWAYS or plain in names:
            out[key] = value
    return _tag(out)


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
    rtype = resource.get("resourceType", "")
    summary_names, mandatory = _flags(rtype)
    if mode == "true":
        return _keep(resource, summary_names | mandatory)
    if mode == "text":
        return _keep(resource, mandatory | {"text"})
    if mode == "data":
        return _tag({k: v for k, v in resource.items() if k not in ("text", "_text")})
    return resource


def elements(resource: dict, names: list[str] | None) -> dict:
    """Apply `_elements=a,b`: only the named top-level elements (plus mandatory ones)."""
    if not names:
        return resource
    rtype = resource.get("resourceType", "")
    wanted = {n.split(".", 1)[-1] if n.startswith(rtype + ".") else n for n in names}
    wanted = {n.split(".", 1)[0] for n in wanted}
    return _keep(resource, wanted | _flags(rtype)[1])
