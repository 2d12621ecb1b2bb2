"""batch and transaction (http://hl7.org/fhir/R4/http.html#transaction).

Transaction: one database transaction for all entries; processed DELETE, POST, PUT/PATCH,
GET (http://hl7.org/fhir/R4/http.html#trules); `fullUrl`s of new resources (`urn:uuid:`) are
given server ids first and every reference to them rewritten; conditional references
(`Patient?identifier=...`) are resolved to exactly one resource; any failure rolls everything
back and the response names the entry. Batch: every entry on its own, failures reported in
the entry's response.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from ekd.audit import log
from ekd.errors import FhirError, InvalidRequest, Issue, PayloadTooLarge, PreconditionFailed
from ekd.interaction import audit, conditional, route
from ekd.interaction.base import FhirRequest, FhirResponse, Services
from ekd.interaction.bundle import bundle, response_entry
from ekd.store.resources import ResourceStore, VersionConflict

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def at_entry(exc: FhirError, index: int) -> FhirError:
    """Say which entry failed, keeping the error's status and code."""
    prefix = f"Bundle.entry[{index}]"
    exc.issues = [
        replace(
            issue,
            diagnostics=f"{prefix}: {issue.diagnostics}",
            expression=tuple(f"{prefix}.resource.{e}" for e in issue.expression) or (prefix,),
        )
        for issue in exc.issues
    ]
    exc.diagnostics = exc.issues[0].diagnostics if exc.issues else exc.diagnostics
    return exc


def _entry_request(outer: FhirRequest, index: int, entry: object) -> FhirRequest:
    if not isinstance(entry, dict):
        raise InvalidRequest("An entry must be an object", expression=f"Bundle.entry[{index}]")
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise InvalidRequest("The entry has no request.url",
                             expression=f"Bundle.entry[{index}].request")
    method = request.get("method")
    if method not in ORDER:
        raise InvalidRequest(f"Unsupported request.method '{method}'",
                             expression=f"Bundle.entry[{index}].request.method")
    req = route.parse_url(
        method,
        request["url"],
        outer.base,
        if_match=request.get("ifMatch"),
        if_none_match=request.get("ifNoneMatch"),
        if_none_exist=request.get("ifNoneExist"),
        prefer_return=outer.prefer_return,
        principal=outer.principal,
    )
    resource = entry.get("resource")
    if method == "PATCH":
        req.patch = _patch_document(resource)
    else:
        req.body = resource if isinstance(resource, dict) else None
    if method in ("POST", "PUT") and req.body is None:
        raise InvalidRequest("The entry has no resource", expression=f"Bundle.entry[{index}]")
    return req


def _patch_document(resource: object) -> list | None:
    """In a Bundle a JSON Patch travels as a Binary resource (http://hl7.org/fhir/R4/http.html#patch)."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        import base64

        from ekd.fhir.jsonfmt import loads

        try:
            return loads(base64.b64decode(resource.get("data", "")))
        except (ValueError, FhirError):
            raise InvalidRequest("The Binary does not hold a JSON Patch document") from None
    return None


def process(services: Services, req: FhirRequest) -> FhirResponse:
    body = req.body
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base needs a Bundle", expression="resourceType")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidRequest(
            f"Bundle.type must be batch or transaction, not '{kind}'", expression="Bundle.type"
        )
    entries = body.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidRequest("Bundle.entry must be an array", expression="Bundle.entry")
    if len(entries) > services.settings.max_bundle_entries:
        raise PayloadTooLarge(
            f"The Bundle has {len(entries)} entries; at most "
            f"{services.settings.max_bundle_entries} are accepted"
        )
    if kind == "batch":
        return _batch(services, req, entries)
    try:
        items: list[tuple[int, dict, FhirRequest]] = []
        for index, entry in enumerate(entries):
            try:
                items.append((index, entry, _entry_request(req, index, entry)))
            except FhirError as exc:
                raise at_entry(exc, index) from None
        responses = _run_transaction(services, req, items)
    except FhirError as exc:
        if req.principal is not None:
            with services.db.write() as conn:
                log.append(conn, [replace(audit.failure(req, exc), interaction="transaction")])
        raise
    out = [response_entry(req.base, responses[i], prefer=req.prefer_return)
           for i in range(len(items))]
    return FhirResponse(200, bundle("transaction-response", out))


def _run_transaction(services: Services, req: FhirRequest,
                     items: list[tuple[int, dict, FhirRequest]]) -> dict[int, FhirResponse]:
    """All entries in one database transaction; each entry's audit record commits with it."""
    for attempt in range(1, route.MAX_ATTEMPTS + 1):
        try:
            with services.db.write() as conn:
                responses = _transaction(services, services.store(conn, req.org), items)
                if req.principal is not None:
                    log.append(conn, [audit.record(entry_req, responses[index])
                                      for index, _entry, entry_req in items])
            route.committed(services, list(responses.values()))
            return responses
        except VersionConflict:
            if attempt == route.MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _batch(services: Services, req: FhirRequest, entries: list) -> FhirResponse:
    out = []
    for index, entry in enumerate(entries):
        try:
            entry_req = _entry_request(req, index, entry)
            if entry_req.type is None and entry_req.path_op is None:
                raise InvalidRequest("A batch entry cannot itself be a batch or transaction")
            resp = route.handle(services, entry_req)
            out.append(response_entry(req.base, resp, prefer=req.prefer_return))
        except FhirError as exc:
            out.append({"response": {"status": str(exc.status), "outcome": exc.outcome()}})
    return FhirResponse(200, bundle("batch-response", out))


def _transaction(
    services: Services, store: ResourceStore, items: list[tuple[int, dict, FhirRequest]]
) -> dict[int, FhirResponse]:
    mapping: dict[str, str] = {}
    for index, entry, req in items:
        try:
            _assign_identity(services, store, entry, req, mapping)
        except FhirError as exc:
            raise at_entry(exc, index) from None
    targets: dict[str, int] = {}
    for index, _entry, req in items:
        try:
            if req.body is not None:
                _rewrite(req.body, mapping, services, store)
            if req.method != "GET" and (ident := _identity(req)) is not None:
                if ident in targets:
                    raise InvalidRequest(
                        f"{ident} is also the target of entry {targets[ident]}; a transaction "
                        "may change a resource only once"
                    )
                targets[ident] = index
        except FhirError as exc:
            raise at_entry(exc, index) from None
    responses: dict[int, FhirResponse] = {}
    for index, _entry, req in sorted(items, key=lambda item: (ORDER[item[2].method], item[0])):
        if req.type is None and req.path_op is None:
            raise at_entry(InvalidRequest("A transaction cannot contain a Bundle request"), index)
        try:
            responses[index] = route.execute(services, store, req)
        except VersionConflict:
            raise
        except FhirError as exc:
            raise at_entry(exc, index) from None
    return responses


def _identity(req: FhirRequest) -> str | None:
    rid = req.id or req.assigned_id
    return f"{req.type}/{rid}" if req.type and rid else None


def _assign_identity(
    services: Services, store: ResourceStore, entry: dict, req: FhirRequest,
    mapping: dict[str, str],
) -> None:
    full_url = entry.get("fullUrl")
    if req.method == "POST" and req.type is not None and req.path_op is None:
        if req.if_none_exist:
            match = conditional.at_most_one(
                conditional.find_query(services.search, store, req.type, req.if_none_exist),
                "ifNoneExist",
            )
            if match is not None:
                if full_url:
                    mapping[full_url] = f"{req.type}/{match.id}"
                return
        req.assigned_id = str(uuid.uuid4())
        if full_url:
            mapping[full_url] = f"{req.type}/{req.assigned_id}"
    elif req.method == "PUT" and req.type is not None:
        if req.id is None:
            match = conditional.at_most_one(
                conditional.find(services.search, store, req.type, req.params),
                "Conditional update",
            )
            body_id = req.body.get("id") if req.body else None
            req.assigned_id = match.id if match else (body_id or str(uuid.uuid4()))
        if full_url:
            mapping[full_url] = f"{req.type}/{req.id or req.assigned_id}"


def _rewrite(node: object, mapping: dict[str, str], services: Services, store: ResourceStore
             ) -> None:
    """Point references at server ids: fullUrl matches and conditional references."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if isinstance(value, str):
                    if value in mapping:
                        current[key] = mapping[value]
                    elif key == "reference" and "?" in value and not value.startswith("#"):
                        current[key] = _resolve_conditional(value, services, store)
                    elif key == "div" and "urn:uuid:" in value:
                        for old, new in mapping.items():
                            value = value.replace(old, new)
                        current[key] = value
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(current, list):
            for i, value in enumerate(current):
                if isinstance(value, str) and value in mapping:
                    current[i] = mapping[value]
                elif isinstance(value, dict | list):
                    stack.append(value)


def _resolve_conditional(reference: str, services: Services, store: ResourceStore) -> str:
    rtype, _, query = reference.partition("?")
    from ekd.interaction.base import require_type

    rtype = require_type(rtype)
    matches = conditional.find_query(services.search, store, rtype, query)
    if len(matches) != 1:
        found = "no resource" if not matches else "more than one resource"
        raise PreconditionFailed(
            f"Conditional reference {rtype}?… matches {found}; it must match exactly one",
            issues=[Issue("error", "not-found" if not matches else "multiple-matches",
                          f"Conditional reference {rtype}?… matches {found}")],
        )
    return f"{rtype}/{matches[0].id}"
