"""search-type (http://hl7.org/fhir/R4/http.html#search, http://hl7.org/fhir/R4/search.html).

Returns a searchset Bundle: matches with `search.mode` "match", `_include`/`_revinclude`
results with "include", ignored-parameter warnings as an OperationOutcome entry ("outcome");
`self`, `next` and `previous` links page by cursor (see `ekd.search.execute`).
"""

from __future__ import annotations

from ekd.fhir import subset
from ekd.interaction.base import FhirRequest, FhirResponse, Services, full_url, require_type
from ekd.interaction.bundle import bundle, page_url
from ekd.search.params import SearchQuery
from ekd.store.resources import ResourceStore, Stored


def search(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    settings = services.settings
    query = services.search.parse(rtype, req.params, strict=req.prefer_strict,
                                  max_count=settings.max_page_size)
    count = settings.default_page_size if query.count is None else query.count
    entries: list[dict] = []
    touched: list[Stored] = []
    links: list[tuple[str, str]] = []
    total: int | None = None
    if query.summary == "count" or count == 0:
        if query.total != "none":
            total = (services.search.estimate if query.total == "estimate"
                     else services.search.count)(store, query, req.base)
        links.append(("self", page_url(req.base, rtype, query.used)))
    else:
        page = services.search.page(store, query, count, req.base)
        total = page.total
        included = [s for s in page.included if req.may_read(s.type)]
        entries = [_entry(req.base, s, query, "match") for s in page.matches]
        entries += [_entry(req.base, s, query, "include") for s in included]
        touched = page.matches + included
        links.append(("self", page_url(req.base, rtype, _with(query, query.cursor))))
        if page.next:
            links.append(("next", page_url(req.base, rtype, _with(query, page.next))))
        if page.previous:
            links.append(("previous", page_url(req.base, rtype, _with(query, page.previous))))
    if query.warnings:
        entries.append({
            "resource": {"resourceType": "OperationOutcome",
                         "issue": [i.to_fhir() for i in query.warnings]},
            "search": {"mode": "outcome"},
        })
    return FhirResponse(200, bundle("searchset", entries, total=total, links=links),
                        touched=touched)


def _entry(base: str, stored: Stored, query: SearchQuery, mode: str) -> dict:
    assert stored.content is not None
    return {"fullUrl": full_url(base, stored),
            "resource": subset.apply(stored.content, query.summary, query.elements),
            "search": {"mode": mode}}


def _with(query: SearchQuery, cursor: str | None) -> list[tuple[str, str]]:
    params = list(query.used)
    if cursor:
        params.append(("_cursor", cursor))
    elif query.offset:
        params.append(("_offset", str(query.offset)))
    return params
