"""The relay's HTTP interface (Starlette): accept messages over mutual TLS, publish the directory.

Why (TRANSFER.md, "A relay (store-and-forward switch point) reached over mTLS, which never sees
plaintext"): like the national switch point, the relay takes a sealed message from an
organisation, stores it durably, acknowledges, and pushes it on. It knows who sends only from
the TLS client certificate — chain checked at the handshake against the PKI root, then
`Trust.verify` with the CRL (fail closed) and the signed directory: the URA must be listed and
the certificate must be the one listed for it. Nothing in the request body can claim a sender.

Protocol (errors are always `{"error": code, "message": text}`; bodies are never echoed):

    POST /messages            {"id", "recipient", "kind", "transfer", "body"} → 202
                              {"id", "status": "stored", "hash"}; the same message again → the
                              same 202; the same id with anything else → 422 id_conflict
    GET  /messages/{id}       the sender's own message: {"id", "status", "attempts",
                              "last_error", "answer"}
    GET  /directory/entries   the signed directory entries (JSON list of compact JWS)
    GET  /directory/Organization?identifier=[system|]<ura>, GET /directory/Endpoint
                              FHIR searchset Bundles (IHE mCSD style)
    GET  /health              200 when the store answers
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from cryptography import x509
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ekd.exchange.delivery import COMPACT, Deliverer
from ekd.exchange.directory import (
    PUBLIC_KEY_FILE,
    DirectoryError,
    DirectoryView,
    endpoint_resource,
    organization_resource,
)
from ekd.exchange.relay_store import KINDS, IdConflict, NewMessage, RelayStore
from ekd.exchange.trust import CertificateRejected, Trust
from ekd.fhir import naming_systems

log = logging.getLogger("ekd.exchange.relay")

#: Default limit of a POST /messages request (a whole dossier, signed and encrypted).
DEFAULT_MAX_BODY = 64 * 1024 * 1024
_URA = re.compile(r"[0-9]{8}")
_FIELDS = frozenset({"id", "recipient", "kind", "transfer", "body"})


class Problem(Exception):
    """An error answer: HTTP status, a stable code for programs, a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class FolderDirectory:
    """The directory as the relay serves it: `entries.json` of a directory folder, verified
    with the folder's public key, re-read when the file changes (so `ekd exchange directory
    add` takes effect without a restart). A file that no longer verifies is an error, never
    a reason to fall back to unverified data."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._view: DirectoryView | None = None

    def _file_stamp(self) -> tuple[int, int]:
        try:
            stat = (self.folder / "entries.json").stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def __call__(self) -> DirectoryView:
        stamp = self._file_stamp()
        with self._lock:
            if self._view is None or stamp != self._stamp:
                self._view = None
                self._view = DirectoryView.from_folder(self.folder)
                self._stamp = stamp
            return self._view

    @property
    def public_key_path(self) -> Path:
        return self.folder / PUBLIC_KEY_FILE


def _client_chain(request: Request) -> list[x509.Certificate]:
    """The client's certificate chain from the ASGI TLS extension (set by the TLS layer in
    `ekd.api.tls`, never from a header), leaf first, without the root."""
    tls = (request.scope.get("extensions") or {}).get("tls")
    pems = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not pems:
        return []
    chain = [x509.load_pem_x509_certificate(p.encode("ascii")) for p in pems]
    return [chain[0], *(c for c in chain[1:] if c.subject != c.issuer)]


class Relay:
    """The request handlers, with what they need."""

    def __init__(self, store: RelayStore, directory: Callable[[], DirectoryView], trust: Trust,
                 *, max_body: int = DEFAULT_MAX_BODY, wake: threading.Event | None = None
                 ) -> None:
        self.store = store
        self.directory = directory
        self.trust = trust
        self.max_body = max_body
        self.wake = wake or threading.Event()

    def _view(self) -> DirectoryView:
        try:
            return self.directory()
        except DirectoryError as exc:
            log.error("directory unusable: %s", exc)
            raise Problem(503, "directory_unavailable",
                          "The directory cannot be verified; the relay accepts nothing until "
                          "it can") from None

    def caller(self, request: Request) -> str:
        """The URA of the organisation at the other end of the mutual TLS connection."""
        try:
            chain = _client_chain(request)
        except ValueError:
            raise Problem(403, "certificate_rejected",
                          "The client certificate cannot be read") from None
        if not chain:
            raise Problem(401, "client_certificate_required",
                          "This endpoint requires mutual TLS with an organisation certificate")
        try:
            ura = self.trust.verify(chain, usage="tls")
        except CertificateRejected as exc:
            raise Problem(403, "certificate_rejected", str(exc)) from None
        view = self._view()
        if ura not in view:
            raise Problem(403, "unknown_organisation",
                          f"URA {ura} is not in the directory")
        if view.entry(ura).certificate != chain[0]:
            raise Problem(403, "certificate_not_registered",
                          f"The certificate is not the one the directory lists for URA {ura}")
        return ura

    # --- /messages --------------------------------------------------------------------------

    async def post_message(self, request: Request) -> Response:
        sender = await anyio.to_thread.run_sync(self.caller, request)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Problem(415, "unsupported_media_type", "Send the message as application/json")
        raw = await self._read_body(request)
        # up to 64 MiB of JSON: parse off the event loop
        message = await anyio.to_thread.run_sync(self._parse, sender, raw)
        del raw
        view = self._view()
        if message.recipient not in view:
            raise Problem(422, "unknown_recipient",
                          f"Recipient URA {message.recipient} is not in the directory")
        if view.entry(message.recipient).role != "organisation":
            raise Problem(422, "unknown_recipient",
                          f"URA {message.recipient} is not an organisation that receives "
                          "messages")
        try:
            accepted = await anyio.to_thread.run_sync(self.store.accept, message)
        except IdConflict as exc:
            raise Problem(422, "id_conflict", str(exc)) from None
        if accepted.created:
            log.info("stored %s %s from %s to %s (transfer %s, sha256 %s)", message.kind,
                     message.id, sender, message.recipient, message.transfer, accepted.hash)
            self.wake.set()
        return JSONResponse({"id": accepted.id, "status": "stored", "hash": accepted.hash},
                            status_code=202)

    async def _read_body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it is known to be too large: from
        Content-Length before reading anything, else while streaming."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Problem(400, "bad_request", "Invalid Content-Length")
            if int(declared) > self.max_body:
                raise Problem(413, "too_large",
                              f"The message is larger than {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise Problem(413, "too_large",
                              f"The message is larger than {self.max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _parse(sender: str, raw: bytes) -> NewMessage:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise Problem(400, "invalid_json", "The request body is not JSON") from None
        if not isinstance(data, dict):
            raise Problem(422, "invalid_message", "The message is not a JSON object")
        missing, unknown = _FIELDS - set(data), set(data) - _FIELDS
        if missing or unknown:
            detail = "; ".join(filter(None, [
                missing and "missing: " + ", ".join(sorted(missing)),
                unknown and "unknown: " + ", ".join(sorted(unknown))]))
            raise Problem(422, "invalid_message", f"Message fields wrong ({detail})")
        ids = {}
        for name in ("id", "transfer"):
            try:
                ids[name] = str(uuid.UUID(data[name])) if isinstance(data[name], str) else None
            except ValueError:
                ids[name] = None
            if ids[name] is None:
                raise Problem(422, "invalid_message", f"{name} must be a UUID")
        recipient, kind, body = data["recipient"], data["kind"], data["body"]
        if not isinstance(recipient, str) or not _URA.fullmatch(recipient):
            raise Problem(422, "invalid_message", "recipient must be a URA (8 digits)")
        if kind not in KINDS:
            raise Problem(422, "invalid_message", f"kind must be one of {', '.join(KINDS)}")
        if not isinstance(body, str) or not COMPACT.fullmatch(body):
            raise Problem(422, "invalid_message",
                          "body must be a compact JWE or JWS (base64url segments and dots)")
        return NewMessage(sender=sender, id=ids["id"], recipient=recipient, kind=kind,
                          transfer=ids["transfer"], body=body)

    async def get_message(self, request: Request) -> Response:
        sender = await anyio.to_thread.run_sync(self.caller, request)
        try:
            message_id = str(uuid.UUID(request.path_params["message_id"]))
        except ValueError:
            raise Problem(404, "not_found", "No such message") from None
        message = await anyio.to_thread.run_sync(self.store.get, sender, message_id)
        if message is None:  # also for another sender's message: its existence is private
            raise Problem(404, "not_found", "No such message")
        return JSONResponse(message.status_json())

    # --- /directory -------------------------------------------------------------------------

    async def directory_entries(self, request: Request) -> Response:
        return JSONResponse(self._view().signed_entries)

    async def organizations(self, request: Request) -> Response:
        view = self._view()
        wanted = request.query_params.get("identifier")
        found = view.entries()
        if wanted is not None:
            system, bar, value = wanted.rpartition("|")
            if bar and system not in ("", naming_systems.URA):
                found = []
            else:
                found = [e for e in found if e.ura == value]
        resources = [(organization_resource(e), "match") for e in found]
        resources += [(endpoint_resource(e), "include") for e in found]
        return _searchset(request, resources)

    async def endpoints(self, request: Request) -> Response:
        return _searchset(request, [(endpoint_resource(e), "match")
                                    for e in self._view().entries()])

    async def health(self, request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(self.store.ping)
        except Exception:
            log.exception("relay store unreachable")
            raise Problem(503, "store_unavailable", "The message store does not answer") \
                from None
        return JSONResponse({"status": "ok"})


def _searchset(request: Request, resources: list[tuple[dict[str, Any], str]]) -> Response:
    base = str(request.base_url).rstrip("/") + "/directory"
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": sum(1 for _, mode in resources if mode == "match"),
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                   "search": {"mode": mode}} for r, mode in resources],
    }
    return JSONResponse(bundle, media_type="application/fhir+json")


def create_app(relay: Relay, deliverer: Deliverer | None = None, *, poll: float = 1.0
               ) -> Starlette:
    """The ASGI app; with a `deliverer`, the push worker runs in a thread for the app's
    lifetime (started and stopped by the lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if deliverer is not None:
            thread = threading.Thread(target=deliverer.run, args=(stop, relay.wake, poll),
                                      name="relay-delivery", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            relay.wake.set()
            if thread is not None:
                await anyio.to_thread.run_sync(thread.join)
                deliverer.close()  # type: ignore[union-attr]

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return _error(exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"),
                      str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("relay request failed", exc_info=exc)
        return _error(500, "internal", "The relay could not handle the request")

    routes = [
        Route("/messages", relay.post_message, methods=["POST"]),
        Route("/messages/{message_id}", relay.get_message, methods=["GET"]),
        Route("/directory/entries", relay.directory_entries, methods=["GET"]),
        Route("/directory/Organization", relay.organizations, methods=["GET"]),
        Route("/directory/Endpoint", relay.endpoints, methods=["GET"]),
        Route("/health", relay.health, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        Problem: problem, HTTPException: http_error, Exception: internal})
