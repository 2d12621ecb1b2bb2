"""patch with JSON Patch (http://hl7.org/fhir/R4/http.html#patch, RFC 6902).

The patched resource is validated like any update; a patch may not change the resource's type
or id. A patch that cannot be applied (failed `test`, missing path) is 422.
"""

from __future__ import annotations

import copy

import jsonpatch
import jsonpointer

from ekd.errors import Gone, InvalidRequest, NotFound, Unprocessable
from ekd.interaction import conditional
from ekd.interaction.base import FhirRequest, FhirResponse, Services, require_type
from ekd.interaction.write import check_if_match, guarded, validate
from ekd.store.resources import ResourceStore


def patch(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    if req.id is None:
        current = conditional.at_most_one(
            conditional.find(services.search, store, rtype, req.params), "Conditional patch"
        )
        if current is None:
            raise NotFound("Conditional patch: no resource matches the criteria")
    else:
        current = store.current(rtype, req.id, lock=True)
        if current is None:
            raise NotFound(f"{rtype}/{req.id} is not known")
    if current.deleted:
        raise Gone(f"{rtype}/{current.id} has been deleted")
    check_if_match(req, current)
    if not isinstance(req.patch, list):
        raise InvalidRequest("A JSON Patch document is a JSON array of operations")
    try:
        operations = jsonpatch.JsonPatch(req.patch)
        patched = operations.apply(copy.deepcopy(current.content), in_place=True)
    except jsonpatch.InvalidJsonPatch as exc:
        raise InvalidRequest(f"Invalid JSON Patch document: {exc}") from None
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise Unprocessable(f"The patch cannot be applied: {exc}") from None
    if not isinstance(patched, dict) or patched.get("resourceType") != rtype:
        raise Unprocessable("A patch may not change the resource type", expression="resourceType")
    if patched.get("id") != current.id:
        raise Unprocessable("A patch may not change the resource id", expression="id")
    checked = validate(services, patched, store)
    stored = guarded(req, lambda: store.update(current, patched, method="PATCH",
                                                 validated=checked.stamp))
    return FhirResponse(200, stored.content, stored, issues=checked.warnings, write=True)
