"""update, update-as-create and conditional update
(http://hl7.org/fhir/R4/http.html#update, #cond-update, #concurrency).

`If-Match` makes the update conditional on the current version (412 otherwise, also when a
concurrent writer gets in between: the store's compare-and-set catches that). An update that
changes nothing but `meta.versionId`/`meta.lastUpdated` creates no new version.
"""

from __future__ import annotations

import uuid

from ekd.errors import Conflict, InvalidRequest
from ekd.interaction import conditional
from ekd.interaction.base import (
    FhirRequest,
    FhirResponse,
    Services,
    require_body,
    require_id,
    require_type,
    versioned_url,
)
from ekd.interaction.write import check_if_match, guarded, validate
from ekd.store.resources import ResourceStore, Stored


def _unchanged(current: Stored, body: dict) -> bool:
    if current.deleted or current.content is None:
        return False

    def strip(resource: dict) -> dict:
        meta = {
            k: v
            for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        out = {k: v for k, v in resource.items() if k != "meta"}
        if meta:
            out["meta"] = meta
        return out

    return strip(current.content) == strip(body)


def update(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    body = require_body(req)
    if req.id is None:
        return _conditional_update(services, store, req, rtype, body)
    rid = require_id(req.id)
    if "id" not in body:
        raise InvalidRequest("The resource must carry its id for an update", expression="id")
    if body["id"] != rid:
        raise InvalidRequest(
            f"The id in the body ({body['id']}) differs from the id in the URL ({rid})",
            expression="id",
        )
    return _update(services, store, req, rtype, rid, body,
                   store.current(rtype, rid, lock=True))


def _update(
    services: Services,
    store: ResourceStore,
    req: FhirRequest,
    rtype: str,
    rid: str,
    body: dict,
    current: Stored | None,
) -> FhirResponse:
    check_if_match(req, current)
    checked = validate(services, body, store)
    warnings = checked.warnings
    if current is None:
        if store.scoped(rtype) and store.taken(rtype, rid):
            # Ids are unique per type across the server; the holder stays anonymous.
            raise Conflict(f"The id '{rid}' is not available for a new {rtype}; choose "
                           "another id or let the server assign one (POST)")
        stored = store.create(rtype, rid, body, method="PUT", validated=checked.stamp)
        return FhirResponse(
            201, stored.content, stored, versioned_url(req.base, stored), warnings, write=True
        )
    if _unchanged(current, body):
        return FhirResponse(200, current.content, current, issues=warnings, write=True)
    stored = guarded(req, lambda: store.update(current, body, method="PUT",
                                                 validated=checked.stamp))
    if current.deleted:  # brought back to life: a new resource as far as the client can tell
        return FhirResponse(
            201, stored.content, stored, versioned_url(req.base, stored), warnings, write=True
        )
    return FhirResponse(200, stored.content, stored, issues=warnings, write=True)


def _conditional_update(
    services: Services, store: ResourceStore, req: FhirRequest, rtype: str, body: dict
) -> FhirResponse:
    match = conditional.at_most_one(
        conditional.find(services.search, store, rtype, req.params), "Conditional update"
    )
    if match is not None:
        if "id" in body and body["id"] != match.id:
            raise InvalidRequest(
                "The id in the body differs from the id of the matching resource",
                expression="id",
            )
        return _update(services, store, req, rtype, match.id, body, match)
    rid = body.get("id") or req.assigned_id or str(uuid.uuid4())
    rid = require_id(rid)
    return _update(services, store, req, rtype, rid, body, store.current(rtype, rid, lock=True))
