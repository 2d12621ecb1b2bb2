"""Matching for conditional create, update, delete and references
(http://hl7.org/fhir/R4/http.html#ccreate, #cond-update, #cdelete, and
http://hl7.org/fhir/R4/http.html#trules for `Patient?identifier=...` references).

Unknown parameters are an error here, not a warning: silently ignoring one would widen the
match and update or delete the wrong resource.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ekd.errors import InvalidRequest, PreconditionFailed
from ekd.search import execute
from ekd.search.params import parse
from ekd.store.resources import ResourceStore, Stored


def find(store: ResourceStore, rtype: str, params: list[tuple[str, str]]) -> list[Stored]:
    """At most two matches: enough to tell none, one and many apart."""
    criteria = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    if not criteria:
        raise InvalidRequest("A conditional interaction needs search criteria")
    query = parse(rtype, criteria, strict=True)
    return store.current_many(execute.matching_pks(store.conn, query, limit=2))


def find_query(store: ResourceStore, rtype: str, query_string: str) -> list[Stored]:
    return find(store, rtype, parse_qsl(query_string.lstrip("?"), keep_blank_values=True))


def at_most_one(matches: list[Stored], what: str) -> Stored | None:
    if len(matches) > 1:
        raise PreconditionFailed(f"{what}: the criteria match more than one resource")
    return matches[0] if matches else None
