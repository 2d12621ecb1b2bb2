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

#: What `ekd.audit.search` answers for AuditEvent.
AUDIT_PARAMS = [("patient", "reference"), ("date", "date"), ("agent", "reference"),
                ("action", "token"), ("subtype", "token"), ("outcome", "token"),
                ("entity", "reference"), ("_id", "token")]


def _security(base: str) -> dict:
    """SMART Backend Services (http://hl7.org/fhir/R4/capabilitystatement-definitions.html
    #CapabilityStatement.rest.security; the oauth-uris extension of SMART App Launch)."""
    token = base.removesuffix("/fhir") + "/auth/token"
    return {
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": token}]}],
        "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
            "code": "SMART-on-FHIR"}]}],
        "description": "Bearer access tokens from the token endpoint (client_credentials with "
                       "a private_key_jwt client assertion), or mutual TLS with an "
                       "organisation certificate. Every resource belongs to the organisation "
                       "holding the dossier; other organisations' resources do not exist for "
                       "a caller. Every access is audited (AuditEvent).",
    }


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
        if rtype == "AuditEvent":  # the server's own audit log: read and search only
            resources.append({"type": rtype, "interaction": [
                {"code": "read"}, {"code": "search-type"}], "searchParam": [
                {"name": n, "type": t} for n, t in AUDIT_PARAMS]})
            continue
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
            "security": _security(base),
            "resource": resources,
            "interaction": [{"code": c} for c in SYSTEM],
            **({"operation": system_ops} if system_ops else {}),
        }],
    }
