"""The authenticated caller, as every layer below the API sees it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from ekd.security.scopes import Scope


class Role(StrEnum):
    """JGZ roles (the permission matrix is in `ekd.security.policy`).

    `system` is a machine client without a user (SMART Backend Services, mutual TLS): it may do
    what its scopes allow, within its own organisation.
    """

    JEUGDARTS = "jeugdarts"
    JEUGDVERPLEEGKUNDIGE = "jeugdverpleegkundige"
    DOKTERSASSISTENT = "doktersassistent"
    ADMINISTRATIEF_MEDEWERKER = "administratief-medewerker"
    BEHEERDER = "beheerder"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Principal:
    #: URA of the organisation the caller acts for; every resource it touches is scoped to it.
    org: str
    client_id: str
    role: Role
    scopes: tuple[Scope, ...]
    #: UZI number or local user id, and display name (None for a machine client).
    user_id: str | None = None
    user_name: str | None = None
    #: The user on whose behalf `user_id` acts (e.g. an assistant for a jeugdarts).
    on_behalf_of: str | None = None
    on_behalf_of_name: str | None = None
    #: "token" (bearer JWT) or "mtls" (organisation certificate).
    via: str = "token"
    #: Network address the request came from (audit).
    source: str | None = None
    #: `jti` of the access token, for tracing a session in the audit log.
    token_id: str | None = None

    def at(self, source: str | None) -> Principal:
        """The same caller seen from a network address."""
        return replace(self, source=source)
