"""AuditEvent read and search: the audit log, as FHIR, for those whose role may read it.

AuditEvents are not stored resources: they live in the append-only audit store
(`ekd.audit`), which answers these requests itself. Every other interaction on AuditEvent is
refused: the server alone writes the log.
"""

from __future__ import annotations

from collections.abc import Callable

from ekd.audit.search import AuditSearch
from ekd.errors import MethodNotAllowed, NotFound
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.store.resources import ResourceStore

_SEARCH = AuditSearch()


def read(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    event = _SEARCH.read(store.conn, req.org, req.id or "")
    if event is None:
        raise NotFound(f"AuditEvent/{req.id} is not known")
    return FhirResponse(200, event)


def search(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    settings = services.settings
    return FhirResponse(200, _SEARCH.search(
        store.conn, req.org, req.params, req.base, settings.default_page_size,
        settings.max_page_size))


def select(req: FhirRequest) -> Callable[[Services, ResourceStore, FhirRequest], FhirResponse]:
    if req.method == "GET" and req.id is not None and req.path_op is None:
        return read
    if req.id is None and ((req.method == "GET" and req.path_op is None)
                           or (req.method == "POST" and req.path_op == "_search")):
        return search
    raise MethodNotAllowed("AuditEvents are written by the server only; they can be read and "
                           "searched")
