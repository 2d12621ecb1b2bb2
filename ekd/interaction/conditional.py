"""Matching for conditional create, update, delete and references
(http://hl7.org/fhir/R4/http.html#ccreate, #cond-update, #cdelete, and
http://hl7.org/fhir/R4/http.html#trules for `Patient?identifier=...` references).

Unknown parameters are an error here, not a warning: silently ignoring one would widen the
match and update or delete the wrong resource.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ekd.errors import InvalidRequest, PreconditionFailed
from ekd.search.execute import SearchService
from ekd.store.resources import ResourceStore, Stored


def find(search: SearchService, store: ResourceStore, rtype: str,
         params: list[tuple[str, str]]) -> list[Stored]:
    """At most two matches: enough to tell none, one and many apart."""
    criteria = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    if not criteria:
        raise InvalidRequest("A conditional interaction needs search criteria")
    query = search.parse(rtype, criteria, strict=True)
    if not query.criteria:
        raise InvalidRequest("A conditional interaction needs search criteria, not only "
                             "result parameters")
    return store.current_many(search.matching_pks(store, query, limit=2))


def find_query(search: SearchService, store: ResourceStore, rtype: str, query_string: str
               ) -> list[Stored]:
    return find(search, store, rtype,
                parse_qsl(query_string.lstrip("?"), keep_blank_values=True))


def at_most_one(matches: list[Stored], what: str) -> Stored | None:
    if len(matches) > 1:
        raise PreconditionFailed(f"{what}: the criteria match more than one resource")
    return matches[0] if matches else None
