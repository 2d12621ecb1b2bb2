"""HTTP side of authentication: the token endpoint, ekd's public keys, SMART discovery, and
reading the bearer token of a FHIR request.

The token endpoint speaks OAuth (RFC 6749 §5: JSON `{"error", "error_description"}`), not
FHIR: its clients are OAuth libraries. Its answers are never cached (`Cache-Control:
no-store`), and nothing here logs a token or an assertion.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ekd.config import Settings
from ekd.errors import Unauthorized
from ekd.security.principal import Principal
from ekd.security.ratelimit import RateLimiter, retry_after
from ekd.security.service import Security
from ekd.security.tokens import ASSERTION_ALGORITHMS, TokenError

TOKEN_PATH = "/auth/token"
JWKS_PATH = "/auth/jwks"
#: A token request is a few form fields and one JWT; anything bigger is not one.
MAX_FORM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPE = "application/x-www-form-urlencoded"


def server_base(settings: Settings, request: Request) -> str:
    """Public root of the server (no trailing slash): from `base_url` when configured, which
    is the only trustworthy source behind a proxy; else from the request."""
    if settings.base_url:
        return settings.base_url.rstrip("/").removesuffix("/fhir")
    return str(request.base_url).rstrip("/")


def fhir_base(settings: Settings, request: Request) -> str:
    """The FHIR base URL: the audience access tokens are issued for and checked against."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    return f"{server_base(settings, request)}/fhir"


def token_url(settings: Settings, request: Request) -> str:
    """What a client assertion's `aud` must be."""
    return server_base(settings, request) + TOKEN_PATH


def bearer_principal(security: Security, request: Request, audience: str) -> Principal | None:
    """The caller of a FHIR request: None without an Authorization header; `Unauthorized`
    when the header or the token is not acceptable. `source` is the peer address; behind a
    proxy the caller may replace it."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("The Authorization header must be 'Bearer <access token>'",
                           error="invalid_request")
    principal = security.tokens.verify(token, audience)
    return principal.at(request.client.host if request.client else None)


def router(security: Security, settings: Settings, limiter: RateLimiter | None = None
           ) -> APIRouter:
    """`limiter` throttles token requests per client address (before the assertion is even
    read: guessing at it costs a signature check each time)."""
    api = APIRouter(tags=["authentication"])

    @api.post(TOKEN_PATH, summary="Access token for a SMART Backend Services client")
    async def token(request: Request) -> JSONResponse:
        """`grant_type=client_credentials` with a `private_key_jwt` client assertion."""
        address = request.client.host if request.client else "unknown"
        wait = limiter.check(f"token:{address}") if limiter is not None else None
        if wait is not None:
            return JSONResponse({"error": "slow_down", "error_description":
                                 "too many token requests from this address"},
                                status_code=429,
                                headers={**_NO_STORE, "Retry-After": retry_after(wait)})
        try:
            form = await _form(request)
            answer = await run_in_threadpool(
                security.tokens.issue, form, token_url(settings, request),
                audience=fhir_base(settings, request))
        except TokenError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=_NO_STORE)
        return JSONResponse(answer, headers=_NO_STORE)

    @api.get(JWKS_PATH, summary="ekd's public token-signing keys")
    def jwks() -> JSONResponse:
        return JSONResponse(security.keys.public_jwks(),
                            headers={"Cache-Control": "public, max-age=300"})

    @api.get("/.well-known/smart-configuration", summary="SMART discovery document")
    def smart_configuration(request: Request) -> JSONResponse:
        base = server_base(settings, request)
        return JSONResponse({
            "issuer": security.tokens.issuer,
            "jwks_uri": base + JWKS_PATH,
            "token_endpoint": base + TOKEN_PATH,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": ["system/*.cruds", "system/*.rs", "user/*.cruds",
                                 "user/*.rs"],
            "capabilities": ["client-confidential-asymmetric", "permission-v1",
                             "permission-v2"],
        })

    return api


async def _form(request: Request) -> dict[str, str]:
    """The form fields; each at most once (RFC 6749 §3.2)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != FORM_TYPE:
        raise TokenError("invalid_request", f"the request body must be {FORM_TYPE}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise TokenError("invalid_request", "the request body is too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise TokenError("invalid_request", "the request body is too large")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise TokenError("invalid_request", "the request body is not URL-encoded") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise TokenError("invalid_request", f"{name} is given more than once")
        form[name] = value
    return form
