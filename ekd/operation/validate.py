"""$validate (http://hl7.org/fhir/R4/resource-operation-validate.html).

`POST [base]/[type]/$validate` with the resource (or a Parameters with `resource`, `mode`,
`profile`); `[base]/[type]/[id]/$validate` validates the given resource as an update of that
id, or, when none is given, the stored resource. The answer is always an OperationOutcome
(200): the validity of the resource is in its issues, not in the HTTP status.
"""

from __future__ import annotations

from ekd.errors import Gone, InvalidRequest, NotFound
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.operation import Operation, parameters
from ekd.interaction.write import profiles_for
from ekd.store.resources import ResourceStore

MODES = frozenset({"create", "update", "delete"})


def validate(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    resource: dict | None = None
    mode: str | None = None
    profiles: list[str] = []
    body = req.body
    if body is not None and body.get("resourceType") != "Parameters":
        resource = body
    for name, value in parameters(req):
        if name == "resource" and isinstance(value, dict):
            resource = value
        elif name == "mode" and isinstance(value, str):
            mode = value
        elif name == "profile" and isinstance(value, str):
            profiles.append(value)
    if mode is not None and mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(sorted(MODES))}",
                             expression="mode")
    stored = None
    if resource is None and req.id is not None:
        stored = store.current(req.type or "", req.id)
        if stored is None:
            raise NotFound(f"{req.type}/{req.id} is not known")
        if stored.deleted or stored.content is None:
            raise Gone(f"{req.type}/{req.id} has been deleted")
        resource = stored.content
    if resource is None:
        raise InvalidRequest("Nothing to validate: send the resource, or a Parameters with "
                             "a 'resource' parameter")
    if req.type is not None and resource.get("resourceType") != req.type:
        raise InvalidRequest(f"The resource is a {resource.get('resourceType')}, but the URL "
                             f"names {req.type}", expression="resourceType")
    if mode == "update" and req.id is not None and resource.get("id") != req.id:
        raise InvalidRequest("For mode=update the resource id must match the URL",
                             expression="id")
    if mode == "delete":
        issues = []  # nothing in ekd forbids deleting a resource yet
    else:
        wanted = [*profiles_for(services, resource), *profiles]
        issues = [i.to_fhir() for i in services.validator.validate(resource, wanted)]
    if not any(i["severity"] in ("error", "fatal") for i in issues):
        issues.insert(0, {"severity": "information", "code": "informational",
                          "diagnostics": "Validation found no errors"})
    # The stored resource validated is what the audit record is about.
    return FhirResponse(200, {"resourceType": "OperationOutcome", "issue": issues},
                        touched=[stored] if stored is not None else [])


OPERATION = Operation(
    name="validate",
    handler=validate,
    levels=frozenset({"type", "instance"}),
    definition="http://hl7.org/fhir/OperationDefinition/Resource-validate",
)
