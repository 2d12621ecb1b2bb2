"""HTTP for dossier transfer: the inbox the relay delivers to, and transfer status.

`POST /exchange/inbox` answers only the relay, identified by its organisation certificate
(mutual TLS, chain and CRL checked, URA = `EKD_EXCHANGE_RELAY_URA`); the relay vouches for the
sender's URA in `Ekd-Sender-Ura` because it authenticated the sender the same way. Status and
review are for the organisation's own callers (bearer token or certificate), read from the
transfer service; nothing here touches the database directly.
"""

from __future__ import annotations

from datetime import date

from cryptography import x509
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ekd.api.fhir import base_url
from ekd.api.identify import Identify
from ekd.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge, Unauthorized
from ekd.exchange.trust import CertificateRejected
from ekd.interaction.base import Services
from ekd.security import policy
from ekd.security.principal import Principal
from ekd.transfer import bulk, inbox, review, status
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

    @api.post("/jobs", status_code=202, summary="Start a bulk transfer of a cohort")
    async def start_job(request: Request) -> JSONResponse:
        principal = _reader(identify, exchange, request)
        body = await _json_object(request)
        try:
            born_from = date.fromisoformat(str(body.get("born_from")))
            born_to = date.fromisoformat(str(body.get("born_to")))
        except ValueError:
            raise InvalidRequest("born_from and born_to must be dates (YYYY-MM-DD)",
                                 expression="born_from") from None
        job_id, children = await run_in_threadpool(
            bulk.create_job, services, exchange, principal=principal, born_from=born_from,
            born_to=born_to, postcode_from=_text(body, "postcode_from"),
            postcode_to=_text(body, "postcode_to"), recipient=_text(body, "recipient"),
            reason=_text(body, "reason") or "age4")
        return JSONResponse({"job": job_id, "children": children}, status_code=202,
                            headers={"Location": f"/exchange/jobs/{job_id}"})

    @api.get("/jobs", summary="Bulk transfer runs of this organisation")
    async def list_jobs(request: Request) -> JSONResponse:
        _reader(identify, exchange, request)
        return JSONResponse({"jobs": await run_in_threadpool(bulk.jobs, services,
                                                             exchange.ura)})

    @api.get("/jobs/{job_id}", summary="A bulk run's report (counts per category, children "
             "needing attention)")
    async def job_report(request: Request, job_id: str) -> JSONResponse:
        _reader(identify, exchange, request)
        return JSONResponse(await run_in_threadpool(bulk.report, services, exchange.ura,
                                                    job_id))

    @api.post("/received/{pk}/decision", summary="Decide on a dossier in manual review: "
              '{"decision": "new" | "reject" | "Patient/<id>"}')
    async def decide(request: Request, pk: int) -> JSONResponse:
        principal = _reader(identify, exchange, request)
        if not policy.allows(principal, "Patient", "u"):
            raise Forbidden("Deciding on a received dossier needs write access to patients")
        decision = _text(await _json_object(request), "decision") or ""
        result, child = await run_in_threadpool(review.resolve, services, exchange, pk,
                                                decision, principal)
        return JSONResponse({"state": result, "patient": child})

    return api


async def _json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("The body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object")
    return body


def _text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", expression=name)
    return value
