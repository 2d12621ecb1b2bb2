"""HTTP hardening around the FHIR app: security headers, CORS, and an access log without BSNs.

Pure ASGI middlewares (Starlette's `BaseHTTPMiddleware` costs a task and a stream per request).
`install(app, settings)` wraps them *outside* Starlette's own stack, around the
`ServerErrorMiddleware` too, so that even the 500 answer to an unexpected error carries the
security headers and is logged.

Authentication and rate limiting are deliberately not middlewares: they need the route (which
endpoints are public) and the authenticated client, and they must answer with an
OperationOutcome through `ekd.api.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote_plus

from starlette.middleware.cors import CORSMiddleware
from stdnum.nl import bsn

from ekd.config import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("ekd.access")

# --- security headers -------------------------------------------------------------------------

_ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
#: Nothing a FHIR response needs may load or frame anything.
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")
#: One year; no includeSubDomains, as ekd does not know what else runs under its domain.
_HSTS = (b"strict-transport-security", b"max-age=31536000")

#: The OpenAPI pages load scripts and styles from a CDN; a strict CSP would blank them.
_OPENAPI_PATHS = ("/docs", "/redoc", "/openapi.json")
#: Responses with patient data, tokens or audit records: never in a shared or browser cache.
_NO_STORE_PREFIXES = ("/fhir", "/auth")


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _app_path(scope: Scope) -> str:
    """The path without the root path (uvicorn's `scope["path"]` includes `--root-path`)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response, leaving headers the app set alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _app_path(scope)
        extra = list(_ALWAYS)
        if not _under(path, _OPENAPI_PATHS):
            extra.append(_CSP)
        if _under(path, _NO_STORE_PREFIXES):
            extra.append(_NO_STORE)
        if scope.get("scheme") == "https":
            extra.append(_HSTS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- CORS -------------------------------------------------------------------------------------

#: Request headers a browser-based FHIR client sends (conditional and preference headers).
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Accept", "If-Match", "If-None-Exist",
                      "If-None-Match", "If-Modified-Since", "Prefer")
#: Response headers a browser-based FHIR client needs to read (versioning, created resources).
CORS_EXPOSE_HEADERS = ("ETag", "Location", "Content-Location", "Last-Modified")
CORS_ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def cors(app: ASGIApp, origins: tuple[str, ...]) -> ASGIApp:
    """Starlette's CORS middleware for `origins` (credentials off: bearer tokens travel in the
    Authorization header, not in cookies)."""
    return CORSMiddleware(
        app,  # type: ignore[arg-type]
        allow_origins=list(origins),
        allow_methods=list(CORS_ALLOW_METHODS),
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        allow_credentials=False,
        max_age=600,
    )


# --- access log -------------------------------------------------------------------------------

REDACTED = "***"
#: Parameters whose values are always hidden, whatever they contain: paging cursors may
#: encode the search they continue, `_filter` may hold an identifier expression.
ALWAYS_REDACTED = frozenset({"_cursor", "_filter"})

#: Digit groups, possibly with the separators a BSN is written with (1234.56.782, 123 456 782).
_NUMBERISH = re.compile(r"[0-9]+(?:[ .\-][0-9]+)*")
_NINE_DIGITS = re.compile(r"(?<![0-9])[0-9]{9}(?![0-9])")
#: Characters kept as they are when a redacted component is re-encoded for the log.
_SAFE = "|:,/.*-_~$"


def _is_identifier_parameter(name: str) -> bool:
    """True for `identifier`, `identifier:of-type`, `patient.identifier`, `subject:identifier`
    (the R4 reference modifier), `_has:Observation:patient:identifier`, custom
    `…-identifier` parameters and `_cursor`: any `:`/`.` segment of the name naming an
    identifier."""
    lowered = name.lower()
    if lowered in ALWAYS_REDACTED:
        return True
    return any(segment.endswith("identifier") for segment in re.split(r"[:.]", lowered))


def _redact_bsns(text: str) -> str:
    """Replace every 9-digit number passing the BSN eleven-test by `***`."""

    def number(match: re.Match[str]) -> str:
        token = match.group()
        digits = re.sub(r"[^0-9]", "", token)
        if len(digits) == 9 and bsn.is_valid(digits):
            return REDACTED
        return _NINE_DIGITS.sub(
            lambda m: REDACTED if bsn.is_valid(m.group()) else m.group(), token)

    return _NUMBERISH.sub(number, text)


def redact_path(path: str) -> str:
    """A URL path with BSN-like numbers masked (for log lines)."""
    return _redact_bsns(path)


def _scrub(raw: str) -> str:
    """One name or value of the query: unchanged unless (once decoded) it holds a BSN."""
    decoded = unquote_plus(raw)
    redacted = _redact_bsns(decoded)
    return raw if redacted == decoded else quote(redacted, safe=_SAFE)


def redact_query(query: str) -> str:
    """The query string with identifier-search values and BSNs replaced by `***`.

    Names are kept (they say what kind of search it was), values of identifier searches are
    hidden whatever they hold (an identifier may be a BSN with a system, a local number, …),
    and any other value or name in which a 9-digit number passes the BSN eleven-test has that
    number hidden, however it is percent-encoded. The order and `&`-structure are preserved.
    """
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and _is_identifier_parameter(unquote_plus(name)):
            parts.append(f"{_scrub(name)}={REDACTED}")
        else:
            parts.append(_scrub(name) + eq + (_scrub(value) if eq else ""))
    return "&".join(parts)


class AccessLogMiddleware:
    """One INFO line per request on the `ekd.access` logger, replacing uvicorn's access log
    (which would print the query with any BSN in it).

    The line: method, path, redacted query, status, duration in ms, client address. The same
    fields are attached to the record (`extra`) for structured log handlers. A BSN-like number in
    the path is masked too.
    """

    def __init__(self, app: ASGIApp, logger: logging.Logger = access_log) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        except asyncio.CancelledError:
            status = status or 499  # the client went away before an answer (nginx's code)
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            self._log(scope, status, (time.perf_counter() - start) * 1000.0)

    def _log(self, scope: Scope, status: int, duration_ms: float) -> None:
        query = redact_query(bytes(scope.get("query_string") or b"").decode("latin-1"))
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        method = scope.get("method", "-")
        # FHIR paths hold logical ids, not BSNs; but a client choosing ids (update as create)
        # could use one, so the path gets the same eleven-test scrub as the query.
        path = redact_path(scope.get("path", ""))
        self.logger.info(
            '%s "%s %s%s" %d %.1fms', address, method, path, f"?{query}" if query else "",
            status, duration_ms,
            extra={"http_method": method, "http_path": path, "http_query": query,
                   "http_status": status, "duration_ms": round(duration_ms, 1),
                   "client_address": address},
        )


# --- installation -----------------------------------------------------------------------------


def wrap(app: ASGIApp, settings: Settings) -> ASGIApp:
    """`app` inside the hardening middlewares, outermost first: access log, security headers,
    CORS (only when `settings.cors_origins` is set)."""
    inner = cors(app, settings.cors_origins) if settings.cors_origins else app
    return AccessLogMiddleware(SecurityHeadersMiddleware(inner))


def install(app: Any, settings: Settings) -> None:
    """Put the hardening middlewares around a Starlette/FastAPI app, outside its error handling.

    Starlette builds its middleware stack on the first request; wrapping the builder (rather
    than `add_middleware`, which places middlewares inside `ServerErrorMiddleware`) makes the
    500 response to an unhandled error pass through them as well. Call before serving.
    """
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("install() must run before the app serves its first request")
    build = app.build_middleware_stack

    def build_hardened() -> ASGIApp:
        return wrap(build(), settings)

    app.build_middleware_stack = build_hardened
