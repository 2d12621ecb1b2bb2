"""Routing a FHIR request (from HTTP or from a Bundle entry) to its interaction.

One table for both, so that `Patient/1/_history/2` in a transaction entry means exactly what it
means in a URL. `handle` owns the database transaction and retries a request that lost a
compare-and-set race (only when the client did not pin a version with `If-Match`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from ekd.audit import log
from ekd.errors import FhirError, InvalidRequest, MethodNotAllowed, NotFound, NotSupported
from ekd.interaction import audit, audit_event
from ekd.interaction.base import FhirRequest, FhirResponse, Services, require_type
from ekd.interaction.create import create
from ekd.interaction.delete import delete
from ekd.interaction.history import history
from ekd.interaction.patch import patch
from ekd.interaction.read import read, vread
from ekd.interaction.search import search
from ekd.interaction.update import update
from ekd.security import policy
from ekd.store.resources import ResourceStore, VersionConflict

Interaction = Callable[[Services, ResourceStore, FhirRequest], FhirResponse]

MAX_ATTEMPTS = 3


def parse_path(
    method: str, path: str, params: list[tuple[str, str]], base: str, **headers: object
) -> FhirRequest:
    """Split `[type]/[id]/_history/[vid]` and friends into a FhirRequest."""
    parts = [p for p in path.strip("/").split("/") if p]
    req = FhirRequest(method=method.upper(), base=base, params=params, **headers)  # type: ignore[arg-type]
    if parts and parts[-1].startswith("$"):
        # [base]/$op, [base]/[type]/$op, [base]/[type]/[id]/$op
        req.operation = parts.pop()[1:]
        if len(parts) > 2:
            raise NotFound(f"Unknown path '{path}'")
        if parts:
            req.type = require_type(parts[0])
        if len(parts) == 2:
            req.id = parts[1]
        return req
    if any(p.startswith("$") for p in parts):
        raise NotFound(f"Unknown path '{path}'")
    if not parts:
        return req
    if parts[0] in ("_history", "metadata"):
        if len(parts) != 1:
            raise NotFound(f"Unknown path '{path}'")
        req.path_op = parts[0]
        return req
    req.type = require_type(parts[0])
    rest = parts[1:]
    if not rest:
        return req
    if rest[0] in ("_history", "_search"):
        if len(rest) != 1:
            raise NotFound(f"Unknown path '{path}'")
        req.path_op = rest[0]
        return req
    req.id = rest[0]
    if len(rest) == 1:
        return req
    if rest[1] != "_history" or len(rest) > 3:
        raise NotFound(f"Unknown path '{path}'")
    req.path_op = "_history"
    if len(rest) == 3:
        req.version = rest[2]
    return req


def parse_url(method: str, url: str, base: str, **headers: object) -> FhirRequest:
    """A Bundle entry's `request.url`: relative to the base, or absolute on this server."""
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    elif "://" in url.split("?", 1)[0]:
        raise InvalidRequest(f"request.url '{url}' is not on this server")
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    return parse_path(method, parts.path, params, base, **headers)


def select(req: FhirRequest) -> Interaction:
    if req.operation is not None:
        from ekd.interaction.operation import find

        return find(req).handler
    m, op = req.method, req.path_op
    if req.type == "AuditEvent":
        return audit_event.select(req)
    if req.type is None:
        if op == "_history" and m == "GET":
            return history
        raise MethodNotAllowed(f"{m} is not supported on this path")
    if req.id is None:
        if op == "_history":
            if m == "GET":
                return history
        elif op == "_search":
            if m == "POST":
                return search
        elif m == "GET":
            return search
        elif m == "POST":
            return create
        elif m == "PUT":
            return update
        elif m == "DELETE":
            return delete
        elif m == "PATCH":
            return patch
        raise MethodNotAllowed(f"{m} is not supported on this path")
    if op == "_history":
        if m == "GET":
            return vread if req.version is not None else history
        raise MethodNotAllowed(f"{m} is not supported on history")
    table: dict[str, Interaction] = {"GET": read, "PUT": update, "PATCH": patch,
                                     "DELETE": delete}
    if m not in table:
        raise MethodNotAllowed(f"{m} is not supported on a resource instance")
    return table[m]


#: Reads that run one statement need no transaction around it.
SINGLE_STATEMENT: frozenset[Interaction] = frozenset({read, vread})


def runs_inline(req: FhirRequest) -> bool:
    """read/vread: one indexed statement. A hop to a worker thread costs more than the read
    itself (~0.3 ms), so the HTTP layer runs these on the event loop; everything else that
    touches the database (writes, search, history, Bundles, operations) goes to the pool.
    Audited reads write a record too, so they go to the pool as well."""
    return (req.principal is None and req.method == "GET" and req.operation is None
            and req.type is not None and req.id is not None
            and select(req) in SINGLE_STATEMENT)


def is_read_only(req: FhirRequest) -> bool:
    if req.operation is not None:
        from ekd.interaction.operation import find

        return not find(req).affects_state
    return req.method in ("GET", "HEAD") or req.path_op == "_search"


def permission(req: FhirRequest, interaction: Interaction) -> str:
    """The actions (SMART c/r/u/d/s) a request needs on its resource type."""
    if req.operation is not None:
        from ekd.interaction.operation import find

        return find(req).permission
    conditional = req.id is None
    if interaction in (read, vread):
        return "r"
    if interaction is history:
        return "r" if req.id is not None else "s"
    if interaction is create:
        return "cs" if req.if_none_exist else "c"
    if interaction is update:
        return "us" if conditional else "u"
    if interaction is patch:
        return "us" if conditional else "u"
    if interaction is delete:
        return "ds" if conditional else "d"
    if interaction is search or interaction is audit_event.search:
        return "s"
    return "r"


def authorise(req: FhirRequest, interaction: Interaction) -> None:
    """The one place where the permission matrix is enforced (ekd.security.policy)."""
    if req.principal is None or req.type is None:
        return  # system history filters per type; Bundles are checked entry by entry
    policy.check(req.principal, req.type, permission(req, interaction))


def execute(services: Services, store: ResourceStore, req: FhirRequest) -> FhirResponse:
    """Run one interaction inside the caller's transaction (a transaction Bundle's entry)."""
    interaction = select(req)
    authorise(req, interaction)
    return interaction(services, store, req)


def handle(services: Services, req: FhirRequest) -> FhirResponse:
    """Run one request in its own transaction (Bundles manage their own), audited when a
    caller (not the server itself) asks: a write's record is committed with the write, a
    read's before the response is sent, a failure's after the rollback."""
    if req.type is None and req.path_op is None and req.operation is None:
        if req.method == "POST":
            from ekd.interaction.transaction import process

            return process(services, req)
        raise NotSupported("Searching across all resource types is not supported yet")
    if req.principal is None:
        return _handle(services, req, audited=False)
    try:
        return _handle(services, req, audited=True)
    except FhirError as exc:
        with services.db.write() as conn:
            log.append(conn, [audit.failure(req, exc)])
        raise


def _handle(services: Services, req: FhirRequest, *, audited: bool) -> FhirResponse:
    interaction = select(req)
    authorise(req, interaction)
    if interaction in SINGLE_STATEMENT and (not audited or services.db.dialect != "sqlite"):
        with services.db.autocommit() as conn:
            resp = interaction(services, services.store(conn, req.org), req)
            if audited:
                # PostgreSQL: the read and then the record, each one statement in its own
                # implicit transaction (the append is atomic by itself): two round trips and
                # no BEGIN/COMMIT, the record committed before the response exists.
                if not services.settings.audit_durable_reads:
                    relax_read_audit_commit(conn)
                log.append(conn, [audit.record(req, resp)])
            return resp
    if is_read_only(req):
        if not audited:
            with services.db.read() as conn:
                return interaction(services, services.store(conn), req)
        # One write transaction for the read and its record: the record is committed before
        # the response exists. (On SQLite this takes the write lock for the read too; a read
        # transaction cannot be upgraded safely once another writer has committed.)
        with services.db.write() as conn:
            resp = interaction(services, services.store(conn, req.org), req)
            if not services.settings.audit_durable_reads:
                relax_read_audit_commit(conn)
            log.append(conn, [audit.record(req, resp)])
        return resp
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with services.db.write() as conn:
                resp = interaction(services, services.store(conn, req.org), req)
                if audited:
                    log.append(conn, [audit.record(req, resp)])
            committed(services, [resp])
            return resp
        except VersionConflict:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def relax_read_audit_commit(conn) -> None:  # type: ignore[no-untyped-def]
    """`EKD_AUDIT_DURABLE_READS=false`: a read's audit record is committed before the response
    is sent, but PostgreSQL may acknowledge the commit before its WAL reaches the disk
    (synchronous_commit off, for this transaction only). A database crash can then lose the
    read records of its last moments (at most three times wal_writer_delay); writes and their
    records stay synchronous. SQLite (WAL, synchronous=NORMAL) never waits for the disk at
    commit anyway."""
    if conn.dialect.name != "postgresql":
        return
    if conn.in_transaction():
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO off")
    elif not conn.info.get("ekd_async_commit"):  # an autocommit connection: once per session
        conn.exec_driver_sql("SET synchronous_commit TO off")
        conn.info["ekd_async_commit"] = True


def committed(services: Services, responses: list[FhirResponse]) -> None:
    """After a commit: conformance resources written take effect at once (no restart)."""
    for resp in responses:
        if resp.write and resp.stored is not None:
            services.definitions.observe(resp.stored)
