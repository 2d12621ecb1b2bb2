"""Keys, clients and tokens, built once at start-up and handed to the API layer.

Development mode must work on a fresh machine in two commands, so it makes what is missing (a
signing key, a local organisation and client). Production mode makes nothing: a server that
would silently invent keys or clients there is a server whose trust anchors nobody chose.
"""

from __future__ import annotations

from dataclasses import dataclass

from ekd.config import Settings
from ekd.security.clients import Client, ClientError, ClientRegistry
from ekd.security.keys import KeyRing, KeyRingError
from ekd.security.principal import Role
from ekd.security.tokens import TokenService
from ekd.store.database import Database

DEV_CLIENT_ID = "ekd-dev"
#: Not a real URA: 9000000x is outside the range CIBG hands out to organisations.
DEV_ORG = "90000001"
DEV_ORG_NAME = "Lokale ontwikkelorganisatie"
DEV_SCOPE = "system/*.cruds user/*.cruds"
DEV_USER_ID = "ontwikkelaar"
DEV_USER_NAME = "Ontwikkelaar (lokaal)"


class SecurityConfigError(RuntimeError):
    """The server must not start like this; the message says what to do."""


def default_issuer(settings: Settings) -> str:
    """ekd's `iss`: the public base URL without `/fhir`, else the listening address. It must
    not depend on the request (Host header), or tokens would verify on one name only."""
    if settings.base_url:
        base = settings.base_url.rstrip("/")
        return base.removesuffix("/fhir")
    return f"http://{settings.host}:{settings.port}"


@dataclass
class Security:
    keys: KeyRing
    clients: ClientRegistry
    tokens: TokenService
    settings: Settings

    @classmethod
    def build(cls, settings: Settings, db: Database, *, issuer: str) -> Security:
        production = settings.mode == "production"
        try:
            keys = KeyRing.load(settings.key_dir) if production else KeyRing.create(
                settings.key_dir)
        except (KeyRingError, OSError) as exc:
            raise SecurityConfigError(f"Signing keys in {settings.key_dir} cannot be used: "
                                      f"{exc}") from exc
        clients = ClientRegistry(db)
        if production:
            if not keys:
                raise SecurityConfigError(
                    f"Production mode needs a token signing key in {settings.key_dir} "
                    "(EKD_KEY_DIR): create one with `ekd keys rotate`.")
            if not any(not c.disabled for c in clients.list()):
                raise SecurityConfigError(
                    "Production mode needs at least one registered client: register one with "
                    "`ekd client add`.")
        audience = settings.base_url.rstrip("/") or None
        tokens = TokenService(keys, clients, issuer=issuer, lifetime=settings.token_lifetime,
                              audience=audience)
        return cls(keys, clients, tokens, settings)

    def ensure_dev_client(self, role: Role | str = Role.JEUGDARTS, *, audience: str,
                          org: str = DEV_ORG, lifetime: int | None = None) -> str:
        """Register the local development client if it is missing and return a token for it
        in `role` (for `ekd serve` to print). Refused in production mode."""
        client = self.dev_client(org)
        chosen = Role(role)
        user = None if chosen is Role.SYSTEM else DEV_USER_ID
        return self.tokens.mint(client.client_id, role=chosen, audience=audience, user_id=user,
                                user_name=DEV_USER_NAME if user else None, lifetime=lifetime)

    def dev_client(self, org: str = DEV_ORG) -> Client:
        """The development client of an organisation (`ekd-dev` for the default one,
        `ekd-dev-<ura>` for others, so tests of organisation scoping can have two), registered
        on first use with every role and all scopes. Refused in production mode."""
        if self.settings.mode == "production":
            raise SecurityConfigError("Development clients are not available in production")
        client_id = DEV_CLIENT_ID if org == DEV_ORG else f"{DEV_CLIENT_ID}-{org}"
        client = self.clients.get(client_id)
        if client is None:
            try:
                client = self.clients.register(
                    client_id, org, DEV_ORG_NAME if org == DEV_ORG else f"Ontwikkelorganisatie "
                    f"{org}", None, DEV_SCOPE, [r.value for r in Role])
            except ClientError:
                client = self.clients.get(client_id)
                if client is None:  # not a lost race: a real problem
                    raise
        if client.disabled:
            raise SecurityConfigError(f"The development client {client_id} is disabled")
        return client
