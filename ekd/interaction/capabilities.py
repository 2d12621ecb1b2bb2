"""capabilities (http://hl7.org/fhir/R4/http.html#capabilities).

Built from what the code supports: the resource types, the interactions `route.select`
dispatches, the search parameters `ekd.search.params` understands and the formats the HTTP
layer negotiates. Built once per process.
"""

from __future__ import annotations

from datetime import date
from functools import cache

from ekd import FHIR_VERSION, __version__
from ekd.fhir.resource_types import resource_types
from ekd.interaction.operation import operations
from ekd.search.params import TOKEN_PARAMS

INSTANCE = ["read", "vread", "update", "patch", "delete", "history-instance"]
TYPE = ["history-type", "create", "search-type"]
SYSTEM = ["transaction", "batch", "history-system"]
FORMATS = ["application/fhir+json", "application/fhir+xml", "json", "xml"]

_SEARCH_DOCS = {
    "_id": ("token", "http://hl7.org/fhir/SearchParameter/Resource-id"),
    "identifier": ("token", None),
}


#: When this process started: the CapabilityStatement describes the running software.
STARTED = date.today().isoformat()


@cache
def capability_statement(base: str) -> dict:
    resources = []
    for rtype in sorted(resource_types()):
        params = []
        for name in sorted(TOKEN_PARAMS):
            kind, definition = _SEARCH_DOCS[name]
            if name == "identifier" and not _has_identifier(rtype):
                continue
            param = {"name": name, "type": kind}
            param["definition"] = definition or f"http://hl7.org/fhir/SearchParameter/{rtype}-identifier"
            params.append(param)
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


def _has_identifier(rtype: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    return "identifier" in get_fhir_model_class(rtype).model_fields
