"""delete and conditional delete (http://hl7.org/fhir/R4/http.html#delete, #cdelete).

Deletion is logical and versioned: a new version marks the resource deleted, history keeps
every earlier version, a later read answers 410. Deleting what does not exist (any more) is
not an error (204).
"""

from __future__ import annotations

from ekd.interaction import conditional
from ekd.interaction.base import FhirRequest, FhirResponse, Services, require_type
from ekd.interaction.write import check_if_match, guarded
from ekd.store.resources import ResourceStore


def delete(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    if req.id is None:
        current = conditional.at_most_one(
            conditional.find(services.search, store, rtype, req.params), "Conditional delete"
        )
    else:
        current = store.current(rtype, req.id, lock=True)
    if req.if_match is not None:
        check_if_match(req, current)
    if current is None or current.deleted:
        return FhirResponse(204, None, None, write=True)
    stored = guarded(req, lambda: store.delete(current))
    return FhirResponse(204, None, stored, write=True, touched=[current])
