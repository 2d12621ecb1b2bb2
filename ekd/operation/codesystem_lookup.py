"""CodeSystem/$lookup (http://hl7.org/fhir/R4/codesystem-operation-lookup.html).

`GET|POST [base]/CodeSystem/$lookup?system=...&code=...` (or a `coding`): Parameters with name,
version, display, designation and property (the concept's own properties plus `parent` and
`child` from the hierarchy, and `definition`); repeat `property` to ask for some only. Only
code systems the server holds can be looked up: anything else is 404, saying which of "system
not held" and "code not in the system" it is.
"""

from __future__ import annotations

from ekd.errors import InvalidRequest, NotFound
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.operation import Operation, parameters
from ekd.operation.valueset_expand import first, text_param
from ekd.store.resources import ResourceStore


def lookup(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    params = parameters(req)
    coding = first(params, "coding")
    if isinstance(coding, str):  # GET: coding=system|code
        system_part, _, code_part = coding.rpartition("|")
        coding = {"system": system_part, "code": code_part}
    if coding is not None and not isinstance(coding, dict):
        raise InvalidRequest("The parameter 'coding' must be a Coding", expression="coding")
    system = coding.get("system") if coding else text_param(params, "system")
    code = coding.get("code") if coding else text_param(params, "code")
    version = (coding.get("version") if coding else None) or text_param(params, "version")
    if not isinstance(system, str) or not system or not isinstance(code, str) or not code:
        raise InvalidRequest("$lookup needs a system and a code (or a coding with both)")
    found = services.terminology.lookup(system, code, version if isinstance(version, str)
                                        else None)
    if found is None:
        cs = services.terminology.code_system(system, version if isinstance(version, str)
                                              else None)
        if cs is None:
            raise NotFound(f"Code system {system} is not held by this server")
        if cs.content == "not-present":
            raise NotFound(f"This server holds no concepts of code system {system}")
        raise NotFound(f"Code '{code}' is not in code system {system}")
    wanted = {v for k, v in params if k == "property" and isinstance(v, str)}
    return FhirResponse(200, lookup_parameters(found, wanted))


def lookup_parameters(found: dict, wanted: set[str]) -> dict:
    def asked(name: str) -> bool:
        return not wanted or name in wanted

    out: list[dict] = [{"name": "name", "valueString": found["name"]}]
    if found["version"]:
        out.append({"name": "version", "valueString": found["version"]})
    out.append({"name": "display", "valueString": found["display"] or found["code"]})
    if asked("designation"):
        for d in found["designations"]:
            parts: list[dict] = []
            if isinstance(d.get("language"), str):
                parts.append({"name": "language", "valueCode": d["language"]})
            if isinstance(d.get("use"), dict):
                parts.append({"name": "use", "valueCoding": d["use"]})
            parts.append({"name": "value", "valueString": d.get("value", "")})
            out.append({"name": "designation", "part": parts})
    properties = list(found["properties"])
    if found["definition"]:
        properties.insert(0, {"code": "definition", "valueString": found["definition"]})
    for prop in properties:
        if not asked(prop["code"]):
            continue
        value = next(((k, v) for k, v in prop.items() if k.startswith("value")), None)
        parts = [{"name": "code", "valueCode": prop["code"]}]
        if value is not None:
            parts.append({"name": "value", value[0]: value[1]})
        out.append({"name": "property", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


OPERATION = Operation(
    name="lookup",
    handler=lookup,
    levels=frozenset({"type"}),
    types=frozenset({"CodeSystem"}),
    definition="http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
)
