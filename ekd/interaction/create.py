"""create and conditional create (http://hl7.org/fhir/R4/http.html#create, #ccreate).

The server assigns the id (a client-supplied one is ignored, as the spec says). With
`If-None-Exist`, one match returns that resource (200) instead of creating a duplicate.
"""

from __future__ import annotations

import uuid

from ekd.interaction import conditional
from ekd.interaction.base import (
    FhirRequest,
    FhirResponse,
    Services,
    require_body,
    require_type,
    versioned_url,
)
from ekd.interaction.write import validate
from ekd.store.resources import ResourceStore


def create(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    body = require_body(req)
    if req.if_none_exist:
        existing = conditional.at_most_one(
            conditional.find_query(services.search, store, rtype, req.if_none_exist),
            "If-None-Exist",
        )
        if existing is not None:
            return FhirResponse(200, existing.content, existing, write=True)
    checked = validate(services, body, store)
    rid = req.assigned_id or str(uuid.uuid4())
    stored = store.create(rtype, rid, body, method="POST", validated=checked.stamp)
    return FhirResponse(
        201,
        stored.content,
        stored,
        location=versioned_url(req.base, stored),
        issues=checked.warnings,
        write=True,
    )
