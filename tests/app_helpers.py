"""Apps and clients for tests: every FHIR request carries a real access token.

Tokens are minted by the server's own TokenService for clients registered in the test
database, with signing keys generated into a temporary folder (never committed).
"""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from ekd.api.app import create_app
from ekd.fhir.resource_types import SHARED_TYPES
from ekd.interaction.base import Services
from ekd.security.principal import Role
from ekd.security.service import Security, default_issuer

#: URAs of the organisations tests act for.
TEST_ORG = "90000010"
OTHER_ORG = "90000020"
ALL_SCOPES = "system/*.cruds user/*.cruds"


def security_for(services: Services) -> Security:
    return Security.build(services.settings, services.db,
                          issuer=default_issuer(services.settings))


def token(security: Security, services: Services, *, org: str = TEST_ORG,
          role: Role | str = Role.SYSTEM, scope: str = ALL_SCOPES,
          user_id: str | None = None, user_name: str | None = None,
          on_behalf_of: str | None = None) -> str:
    """A token of the test client of `org` (registered on first use) in `role`."""
    role = Role(role)
    client_id = f"test-{org}"
    if security.clients.get(client_id) is None:
        security.clients.register(client_id, org, f"Test organisation {org}", None, ALL_SCOPES,
                                  [r.value for r in Role])
    if role is not Role.SYSTEM and user_id is None:
        user_id, user_name = f"uzi-{role.value}", f"Test {role.value}"
    audience = services.settings.base_url or "http://testserver/fhir"
    return security.tokens.mint(client_id, role=role, audience=audience, user_id=user_id,
                                user_name=user_name, scope=scope, on_behalf_of=on_behalf_of)


class TwoUsers(httpx.Auth):
    """Writes of shared conformance resources (profiles, ValueSets, SearchParameters, ...) as
    a beheerder, the only role that may make them; every other request as `default`. A
    request that names its own Authorization header keeps it."""

    def __init__(self, default: str, beheerder: str) -> None:
        self.default = default
        self.beheerder = beheerder

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        if "authorization" not in request.headers:
            parts = request.url.path.split("/")  # "", "fhir", type, ...
            conformance = (request.method in ("POST", "PUT", "PATCH", "DELETE")
                           and len(parts) > 2 and parts[2] in SHARED_TYPES
                           and not parts[-1].startswith("$"))
            chosen = self.beheerder if conformance else self.default
            request.headers["Authorization"] = f"Bearer {chosen}"
        yield request


def fhir_client(services: Services, *, org: str = TEST_ORG, role: Role | str = Role.SYSTEM,
                scope: str = ALL_SCOPES, security: Security | None = None) -> TestClient:
    """A TestClient (use it with `with`) whose requests carry a token for `org` in `role`, and
    a beheerder's of the same organisation for writes of conformance resources."""
    security = security or security_for(services)
    app = create_app(services=services, security=security)
    client = TestClient(app, raise_server_exceptions=False)
    client.auth = TwoUsers(
        token(security, services, org=org, role=role, scope=scope),
        token(security, services, org=org, role=Role.BEHEERDER, scope=ALL_SCOPES))
    return client
