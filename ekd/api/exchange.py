"""HTTP for dossier transfer: the inbox the relay delivers to, and transfer status.

`POST /exchange/inbox` answers only the relay, identified by its organisation certificate
(mutual TLS, chain and CRL checked, URA = `EKD_EXCHANGE_RELAY_URA`); the relay vouches for the
sender's URA in `Ekd-Sender-Ura` because it authenticated the sender the same way. Status and
review are for the organisation's own callers (bearer token or certificate), read from the
transfer service; nothing here touches the database directly.
"""

from __future__ import annotations

from cryptography import x509
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ekd.api.fhir import base_url
from ekd.api.identify import Identify
from ekd.errors import Forbidden, NotFound, PayloadTooLarge, Unauthorized
from ekd.exchange.trust import CertificateRejected
from ekd.interaction.base import Services
from ekd.security import policy
from ekd.security.principal import Principal
from ekd.transfer import inbox, status
from ekd.transfer.context import Exchange


def _relay_only(exchange: Exchange, request: Request) -> None:
    tls = (request.scope.get("extensions") or {}).get("tls")
    pems = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not pems:
        raise Unauthorized("The inbox accepts the relay's certificate only (mutual TLS)",
                           error=None)
    chain = [x509.load_pem_x509_certificate(p.encode("ascii")) for p in pems]
    try:
        ura = exchange.trust.verify(chain, usage="tls")
    except CertificateRejected as exc:
        raise Forbidden(f"Certificate not trusted: {exc}") from None
    if ura != exchange.settings.exchange_relay_ura:
        raise Forbidden("Only the relay delivers to the inbox")


def exchange_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _reader(identify: Identify, exchange: Exchange, request: Request) -> Principal:
    principal = identify(request, base_url(exchange_services(request), request))
    if principal.org != exchange.ura:
        raise Forbidden(f"This server transfers dossiers for organisation {exchange.ura} only")
    if not policy.allows(principal, "Patient", "r"):
        raise Forbidden("Reading transfer status needs read access to patients")
    return principal


def router(services: Services, exchange: Exchange, identify: Identify) -> APIRouter:
    api = APIRouter(prefix="/exchange", tags=["transfer"])

    @api.post("/inbox", summary="Delivery from the relay (mutual TLS, relay only)")
    async def receive(request: Request) -> JSONResponse:
        _relay_only(exchange, request)
        body = await request.body()
        if len(body) > services.settings.max_body_bytes:
            raise PayloadTooLarge("The package is larger than this server accepts")
        h = request.headers
        delivery = inbox.Delivery(
            sender=h.get("ekd-sender-ura", ""), message_id=h.get("ekd-message-id", ""),
            kind=h.get("ekd-kind", ""), transfer_id=h.get("ekd-transfer-id", ""), body=body)
        answer = await run_in_threadpool(inbox.receive, services, exchange, delivery)
        return JSONResponse(answer)

    @api.get("/transfers", summary="Transfers this organisation sent (filter: state, job)")
    async def transfers(request: Request, state: str | None = None, job: str | None = None,
                        limit: int = 100) -> JSONResponse:
        _reader(identify, exchange, request)
        rows = await run_in_threadpool(status.transfers, services, exchange.ura,
                                       state=state, job=job, limit=min(limit, 1000))
        return JSONResponse({"transfers": rows})

    @api.get("/transfers/{transfer_id}", summary="One transfer's state and receipts")
    async def one(request: Request, transfer_id: str) -> JSONResponse:
        _reader(identify, exchange, request)
        row = await run_in_threadpool(status.transfer_view, services, exchange.ura, transfer_id)
        if row is None:
            raise NotFound(f"No transfer {transfer_id}")
        return JSONResponse(row)

    @api.get("/received", summary="Packages received (filter: state, e.g. review)")
    async def received(request: Request, state: str | None = None) -> JSONResponse:
        _reader(identify, exchange, request)
        rows = await run_in_threadpool(status.received, services, exchange.ura, state=state)
        return JSONResponse({"received": rows})

    return api
