"""read and vread (http://hl7.org/fhir/R4/http.html#read, #vread).

A deleted resource answers 410 Gone; `If-None-Match` / `If-Modified-Since` give 304
(conditional read, http://hl7.org/fhir/R4/http.html#cread).
"""

from __future__ import annotations

from ekd.errors import Gone, NotFound
from ekd.fhir import subset
from ekd.interaction.base import (
    FhirRequest,
    FhirResponse,
    Services,
    etag_version,
    parse_version,
    require_type,
)
from ekd.search.parameters import SearchParameters
from ekd.search.params import Parser
from ekd.store.resources import ResourceStore, Stored

#: Reads take only result parameters, which need no search parameter definitions.
_RESULT_PARAMS = Parser(SearchParameters(include_builtin=False))


def _found(stored: Stored | None, what: str) -> Stored:
    if stored is None:
        raise NotFound(f"{what} is not known")
    if stored.deleted:
        raise Gone(f"{what} has been deleted", headers={"ETag": stored.etag})
    return stored


def _subset(req: FhirRequest, content: dict) -> dict:
    summary = req.param("_summary")
    elements = req.param("_elements")
    if summary is None and elements is None:
        return content
    query = _RESULT_PARAMS.parse(content["resourceType"], [
        (k, v) for k, v in req.params if k in ("_summary", "_elements")])
    return subset.apply(content, query.summary, query.elements)


def read(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    rid = req.id or ""
    stored = _found(store.current(rtype, rid), f"{rtype}/{rid}")
    if req.if_none_match is not None and etag_version(req.if_none_match) == stored.version:
        return FhirResponse(304, None, stored)
    if req.if_modified_since is not None and stored.last_updated <= req.if_modified_since:
        return FhirResponse(304, None, stored)
    assert stored.content is not None
    return FhirResponse(200, _subset(req, stored.content), stored)


def vread(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    rid = req.id or ""
    version = parse_version(req.version)
    what = f"{rtype}/{rid}/_history/{req.version}"
    stored = store.vread(rtype, rid, version)
    if stored is None and store.current(rtype, rid) is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    stored = _found(stored, what)
    assert stored.content is not None
    return FhirResponse(200, _subset(req, stored.content), stored)
