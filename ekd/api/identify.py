"""Who is calling: a bearer token or an organisation certificate, else 401; then the
client's rate limit. Runs before any FHIR interaction (only the CapabilityStatement is
public)."""

from __future__ import annotations

from starlette.requests import Request

from ekd.api.auth import bearer_principal
from ekd.api.tls import client_certificate
from ekd.errors import TooManyRequests, Unauthorized
from ekd.security.mtls import certificate_principal
from ekd.security.principal import Principal
from ekd.security.ratelimit import RateLimiter, retry_after
from ekd.security.service import Security


class Identify:
    def __init__(self, security: Security, limiter: RateLimiter) -> None:
        self.security = security
        self.limiter = limiter

    def __call__(self, request: Request, audience: str) -> Principal:
        address = request.client.host if request.client else None
        principal = bearer_principal(self.security, request, audience)  # source already set
        if principal is None:
            cert = client_certificate(request.scope)
            if cert is not None:
                principal = certificate_principal(self.security.clients, cert).at(address)
        if principal is None:
            raise Unauthorized("An access token (Authorization: Bearer) or an organisation "
                               "certificate is required", error=None)
        wait = self.limiter.check(principal.client_id)
        if wait is not None:
            seconds = retry_after(wait)
            raise TooManyRequests(f"Too many requests from this client; retry in {seconds} s",
                                  headers={"Retry-After": seconds})
        return principal
