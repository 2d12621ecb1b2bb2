"""history at instance, type and system level (http://hl7.org/fhir/R4/http.html#history).

Newest first. Pages are cut on the global write sequence (`_page_at`), not on offsets, so a
page link keeps pointing at the same versions while others keep writing.
"""

from __future__ import annotations

from datetime import datetime

from ekd.errors import InvalidRequest, NotFound
from ekd.fhir.datetime import parse_instant
from ekd.interaction.base import FhirRequest, FhirResponse, Services, full_url, require_type
from ekd.interaction.bundle import bundle, page_url
from ekd.store.resources import ResourceStore, Stored, instant

_REQUEST_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK",
                   "DELETE": "204 No Content"}


def _entry(base: str, v: Stored) -> dict:
    entry: dict = {"fullUrl": full_url(base, v)}
    if v.content is not None:
        entry["resource"] = v.content
    url = v.type if v.method == "POST" else f"{v.type}/{v.id}"
    status = "201 Created" if v.version == 1 else _REQUEST_STATUS.get(v.method, "200 OK")
    entry["request"] = {"method": v.method, "url": url}
    entry["response"] = {
        "status": status,
        "etag": v.etag,
        "lastModified": instant(v.last_updated),
    }
    return entry


def history(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type) if req.type is not None else None
    settings = services.settings
    count = settings.default_page_size
    since: datetime | None = None
    page_at: int | None = None
    for key, value in req.params:
        if key == "_count":
            try:
                count = max(0, min(int(value), settings.max_page_size))
            except ValueError:
                raise InvalidRequest("_count must be a whole number", expression="_count") from None
        elif key == "_since":
            since = parse_instant(value, "_since")
        elif key == "_page_at":
            try:
                page_at = int(value)
            except ValueError:
                raise InvalidRequest("Invalid page link", expression="_page_at") from None
    total = None
    if rtype is not None and req.id is not None:
        if store.current(rtype, req.id) is None:
            raise NotFound(f"{rtype}/{req.id} is not known")
        total = store.count_versions(rtype, req.id, since)
    versions = store.history(rtype, req.id, since=since, at_or_before_seq=page_at,
                             limit=count + 1)
    page, rest = versions[:count], versions[count:]
    # System history spans every type: versions the caller's role may not read are left out
    # (the page may then be shorter than _count; the next link still continues after it).
    page = [v for v in page if req.may_read(v.type)]
    path = "/".join(p for p in (rtype, req.id, "_history") if p)
    keep = [(k, v) for k, v in req.params if k in ("_count", "_since")]
    links = [("self", page_url(req.base, path, keep + (
        [("_page_at", str(page_at))] if page_at is not None else [])))]
    if rest:
        links.append(("next", page_url(req.base, path, [*keep, ("_page_at", str(rest[0].seq))])))
    body = bundle("history", [_entry(req.base, v) for v in page], total=total, links=links)
    return FhirResponse(200, body, touched=page)
