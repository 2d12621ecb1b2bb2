"""search-type (http://hl7.org/fhir/R4/http.html#search, http://hl7.org/fhir/R4/search.html).

Returns a searchset Bundle with `search.mode` on every entry, self/next/previous links and
ignored-parameter warnings as an OperationOutcome entry (mode `outcome`).
"""

from __future__ import annotations

from ekd.fhir import subset
from ekd.interaction.base import FhirRequest, FhirResponse, Services, full_url, require_type
from ekd.interaction.bundle import bundle, page_url
from ekd.search import execute
from ekd.search.params import parse
from ekd.store.resources import ResourceStore


def search(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    rtype = require_type(req.type)
    settings = services.settings
    query = parse(rtype, req.params, strict=req.prefer_strict, max_count=settings.max_page_size)
    count = settings.default_page_size if query.count is None else query.count
    entries: list[dict] = []
    links: list[tuple[str, str]] = []
    total: int | None = None
    if query.summary == "count":
        total = execute.count(store.conn, query)
    else:
        pks = execute.matching_pks(store.conn, query, limit=count + 1, offset=query.offset)
        has_next = len(pks) > count
        for stored in store.current_many(pks[:count]):
            assert stored.content is not None
            resource = subset.apply(stored.content, query.summary, query.elements)
            entries.append({"fullUrl": full_url(req.base, stored), "resource": resource,
                            "search": {"mode": "match"}})
        if query.total != "none":
            if query.offset == 0 and not has_next:
                total = len(entries)
            else:
                total = execute.count(store.conn, query)
        links.append(("self", page_url(req.base, rtype, _page(query.used, query.offset))))
        if has_next:
            links.append(("next", page_url(req.base, rtype, _page(query.used,
                                                                  query.offset + count))))
        if query.offset > 0:
            links.append(("previous", page_url(req.base, rtype, _page(
                query.used, max(0, query.offset - count)))))
    if query.warnings:
        entries.append({
            "resource": {"resourceType": "OperationOutcome",
                         "issue": [i.to_fhir() for i in query.warnings]},
            "search": {"mode": "outcome"},
        })
    return FhirResponse(200, bundle("searchset", entries, total=total, links=links))


def _page(used: list[tuple[str, str]], offset: int) -> list[tuple[str, str]]:
    return [*used, ("_offset", str(offset))] if offset else list(used)
