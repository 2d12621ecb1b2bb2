"""ValueSet/$expand (http://hl7.org/fhir/R4/valueset-operation-expand.html).

`GET|POST [base]/ValueSet/$expand?url=...` expands a value set the registry holds (or a
`valueSet` resource POSTed in Parameters); `[base]/ValueSet/[id]/$expand` expands the stored
resource. Inputs: url, valueSetVersion, valueSet, filter, offset, count, activeOnly. The answer
is the ValueSet with an `expansion` (identifier, timestamp, total, offset, the parameters used,
contains); other R4 inputs are ignored. A value set whose content the server does not hold in
full (SNOMED CT by is-a, all of LOINC, ...) is refused with 422 rather than half-expanded.

The helpers here (reading typed parameters, finding the value set a request is about) are
shared with ValueSet/$validate-code.
"""

from __future__ import annotations

import uuid

from ekd.errors import Gone, InvalidRequest, NotFound
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.operation import Operation, parameters
from ekd.store.resources import ResourceStore, instant, now
from ekd.terminology.service import Expansion

Params = list[tuple[str, object]]


def first(params: Params, name: str) -> object | None:
    for key, value in params:
        if key == name:
            return value
    return None


def text_param(params: Params, name: str) -> str | None:
    value = first(params, name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"The parameter '{name}' must be a non-empty string",
                             expression=name)
    return value


def int_param(params: Params, name: str) -> int | None:
    value = first(params, name)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidRequest(f"The parameter '{name}' must be a whole number of 0 or more",
                         expression=name)


def bool_param(params: Params, name: str) -> bool | None:
    value = first(params, name)
    if value is None or isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise InvalidRequest(f"The parameter '{name}' must be true or false", expression=name)


def target_valueset(services: Services, store: ResourceStore, req: FhirRequest,
                    params: Params) -> tuple[str | dict, dict]:
    """What the request is about: (canonical or resource for the service, resource to echo).

    Instance level reads the stored ValueSet; type level takes a POSTed `valueSet` resource or
    `url` (+ `valueSetVersion`) looked up in the registry.
    """
    if req.id is not None:
        stored = store.current("ValueSet", req.id)
        if stored is None:
            raise NotFound(f"ValueSet/{req.id} is not known")
        if stored.deleted or stored.content is None:
            raise Gone(f"ValueSet/{req.id} has been deleted", headers={"ETag": stored.etag})
        return stored.content, stored.content
    resource = first(params, "valueSet")
    if resource is not None:
        if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
            raise InvalidRequest("The parameter 'valueSet' must be a ValueSet resource",
                                 expression="valueSet")
        return resource, resource
    url = text_param(params, "url")
    if url is None:
        raise InvalidRequest("Say which value set: the parameter 'url', a 'valueSet' resource, "
                             "or call the operation on a ValueSet instance")
    version = text_param(params, "valueSetVersion")
    canonical = f"{url}|{version}" if version and "|" not in url else url
    found = services.terminology.resolve(canonical)
    if found is None:
        raise NotFound(f"Value set {canonical} is not known")
    return canonical, found


def expanded(definition: dict, expansion: Expansion, echo: list[dict]) -> dict:
    """The ValueSet as returned by $expand: its definition plus a fresh `expansion`."""
    body: dict = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": instant(now()),
        "total": expansion.total,
    }
    if any(p["name"] in ("offset", "count") for p in echo):
        body["offset"] = expansion.offset
    if echo:
        body["parameter"] = echo
    contains = []
    for entry in expansion.entries:
        item: dict = {"system": entry.system}
        if entry.version:
            item["version"] = entry.version
        item["code"] = entry.code
        if entry.display:
            item["display"] = entry.display
        if entry.abstract:
            item["abstract"] = True
        if entry.inactive:
            item["inactive"] = True
        contains.append(item)
    if contains:
        body["contains"] = contains
    out = {k: v for k, v in definition.items() if k != "expansion"}
    out["expansion"] = body
    return out


def expand(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    params = parameters(req)
    target, definition = target_valueset(services, store, req, params)
    text_filter = text_param(params, "filter")
    offset = int_param(params, "offset")
    count = int_param(params, "count")
    active_only = bool_param(params, "activeOnly")
    result = services.terminology.expand(
        target, filter=text_filter, offset=offset or 0, count=count,
        active_only=bool(active_only),
    )
    echo: list[dict] = []
    if text_filter is not None:
        echo.append({"name": "filter", "valueString": text_filter})
    if offset is not None:
        echo.append({"name": "offset", "valueInteger": offset})
    if count is not None:
        echo.append({"name": "count", "valueInteger": count})
    if active_only is not None:
        echo.append({"name": "activeOnly", "valueBoolean": active_only})
    return FhirResponse(200, expanded(definition, result, echo))


OPERATION = Operation(
    name="expand",
    handler=expand,
    levels=frozenset({"type", "instance"}),
    types=frozenset({"ValueSet"}),
    definition="http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
)
