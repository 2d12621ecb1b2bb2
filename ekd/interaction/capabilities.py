"""capabilities (http://hl7.org/fhir/R4/http.html#capabilities).

Built from what the code supports: the resource types, the interactions `route.select`
dispatches, the search parameters in force (`ekd.search.parameters`) and the formats the HTTP
layer negotiates. Built again only when the search parameters change.
"""

from __future__ import annotations

from datetime import date

from ekd import FHIR_VERSION, __version__
from ekd.fhir.resource_types import resource_types
from ekd.interaction.operation import operations
from ekd.search.parameters import SearchParameters

INSTANCE = ["read", "vread", "update", "patch", "delete", "history-instance"]
TYPE = ["history-type", "create", "search-type"]
SYSTEM = ["transaction", "batch", "history-system"]
FORMATS = ["application/fhir+json", "application/fhir+xml", "json", "xml"]

_CACHE: dict[tuple[str, str], dict] = {}


#: When this process started: the CapabilityStatement describes the running software.
STARTED = date.today().isoformat()


def capability_statement(base: str, parameters: SearchParameters) -> dict:
    key = (base, parameters.signature())
    statement = _CACHE.get(key)
    if statement is None:
        statement = _CACHE[key] = _build(base, parameters)
    return statement


def _build(base: str, parameters: SearchParameters) -> dict:
    resources = []
    for rtype in sorted(resource_types()):
        params = [
            {"name": code, "definition": p.url, "type": p.type}
            for code, p in sorted(parameters.for_type(rtype).items())
            if p.type != "special" and (p.expression or code in ("_id", "_lastUpdated"))
        ]
        params.append({"name": "_list", "type": "token",
                       "documentation": "Resources in the List with this id"})
        ops = [{"name": op.name, "definition": op.definition} for op in operations()
               if op.definition and ("type" in op.levels or "instance" in op.levels)
               and (op.types is None or rtype in op.types)]
        resources.append({
            "type": rtype,
            "interaction": [{"code": c} for c in INSTANCE + TYPE],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "searchInclude": ["*", *sorted(
                f"{rtype}:{code}" for code, p in parameters.for_type(rtype).items()
                if p.type == "reference")],
            "searchRevInclude": ["*"],
            "searchParam": params,
            **({"operation": ops} if ops else {}),
        })
    system_ops = [{"name": op.name, "definition": op.definition} for op in operations()
                  if op.definition and "system" in op.levels]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": STARTED,
        "publisher": "ekd",
        "kind": "instance",
        "software": {"name": "ekd", "version": __version__},
        "implementation": {"description": "ekd FHIR server for the Digitaal Dossier JGZ",
                           "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": FORMATS,
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": c} for c in SYSTEM],
            **({"operation": system_ops} if system_ops else {}),
        }],
    }
