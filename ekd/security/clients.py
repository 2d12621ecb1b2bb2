"""Registered clients (organisation systems) and the client-assertion ids they have used.

A client belongs to exactly one organisation (URA): whatever it asks for, its tokens carry the
organisation of its registration. Its JWKS holds the public keys its client assertions are
signed with; `mtls` clients may also authenticate with the organisation's certificate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import KeySet
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ekd.security.principal import Role
from ekd.security.scopes import Scope, parse_scopes
from ekd.store.database import Database
from ekd.store.schema import auth_client, auth_jti

#: `get` answers from memory for this long (seconds): tokens are verified on every request, and
#: a disabled client must still be locked out soon (`disable` in this process: at once).
CACHE_TTL = 10.0
#: Expired jti rows are deleted at most this often (seconds), and only once they are older
#: than this grace (seconds) beyond their `exp`, so a row outlives the clock-skew leeway with
#: which an assertion's expiry is judged.
PURGE_INTERVAL = 60.0
PURGE_GRACE = timedelta(minutes=5)
#: Private JWK members (RFC 7518 §6.2.2, §6.3.2, §6.4): a registered JWKS must not contain them.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class ClientError(ValueError):
    """A registration that cannot be accepted; the message says why (no secrets in it)."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    #: URA of the organisation the client acts for.
    org: str
    name: str
    jwks: dict[str, Any] | None = field(compare=False, hash=False)
    #: Space-separated SMART scopes it may be granted.
    scope: str
    roles: tuple[Role, ...]
    mtls: bool = False
    disabled: bool = False
    created: datetime | None = None

    @property
    def scopes(self) -> tuple[Scope, ...]:
        return parse_scopes(self.scope)

    def key_set(self) -> KeySet | None:
        """The registered public keys, or None when the client has none."""
        if not self.jwks or not self.jwks.get("keys"):
            return None
        return KeySet.import_key_set(self.jwks)  # type: ignore[arg-type]


class ClientRegistry:
    def __init__(self, db: Database, *, cache_ttl: float = CACHE_TTL) -> None:
        self.db = db
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._lock = threading.Lock()
        self._next_purge = 0.0

    # -- registration -----------------------------------------------------------------------

    def register(self, client_id: str, org: str, name: str, jwks: dict | None, scope: str,
                 roles: list[str], mtls: bool = False) -> Client:
        client_id, org, name = client_id.strip(), org.strip(), name.strip()
        if not client_id or len(client_id) > 128:
            raise ClientError("client_id must be 1 to 128 characters")
        if not org or not org.isdigit() or len(org) > 64:
            raise ClientError("the organisation must be a URA number (digits)")
        if not name:
            raise ClientError("a client needs a name")
        try:
            role_list = tuple(dict.fromkeys(Role(r.strip()) for r in roles if r.strip()))
        except ValueError as exc:
            raise ClientError(f"unknown role; choose from {', '.join(Role)}") from exc
        if not role_list:
            raise ClientError("a client needs at least one role")
        scopes = parse_scopes(scope)
        if not scopes:
            raise ClientError("scope must contain SMART resource scopes such as system/*.rs")
        if jwks is not None:
            _check_jwks(jwks)
        try:
            with self.db.write() as conn:
                if conn.execute(select(auth_client.c.client_id).where(
                        auth_client.c.client_id == client_id)).first() is not None:
                    raise ClientError(f"client {client_id!r} is already registered")
                if mtls and self._mtls_client(conn, org) is not None:
                    raise ClientError(
                        f"organisation {org} already has an enabled mutual-TLS client")
                conn.execute(insert(auth_client).values(
                    client_id=client_id, org=org, name=name, jwks=jwks,
                    scope=" ".join(str(s) for s in scopes), roles=" ".join(role_list),
                    mtls=mtls, disabled=False, created=datetime.now(UTC)))
        except IntegrityError as exc:  # registered concurrently
            raise ClientError(f"client {client_id!r} is already registered") from exc
        finally:
            self._forget(client_id)  # whatever happened, the next `get` asks the database
        client = self.get(client_id)
        assert client is not None
        return client

    def disable(self, client_id: str) -> bool:
        """Lock a client out (its tokens stop verifying); False when it is not registered."""
        with self.db.write() as conn:
            done = conn.execute(update(auth_client).where(auth_client.c.client_id == client_id)
                                .values(disabled=True)).rowcount
        self._forget(client_id)
        return bool(done)

    # -- lookup -----------------------------------------------------------------------------

    def get(self, client_id: str) -> Client | None:
        now = time.monotonic()
        hit = self._cache.get(client_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self.db.autocommit() as conn:
            row = conn.execute(select(auth_client).where(
                auth_client.c.client_id == client_id)).mappings().first()
        client = _client(row) if row is not None else None
        with self._lock:
            if len(self._cache) > 10_000:  # unknown ids must not grow it without bound
                self._cache.clear()
            self._cache[client_id] = (now + self.cache_ttl, client)
        return client

    def list(self) -> list[Client]:
        with self.db.read() as conn:
            rows = conn.execute(select(auth_client).order_by(auth_client.c.client_id)).mappings()
            return [_client(r) for r in rows]

    def by_mtls_org(self, ura: str) -> Client | None:
        """The enabled mutual-TLS client of an organisation (at most one: `register` sees to
        it), for a caller that presented that organisation's certificate."""
        with self.db.autocommit() as conn:
            return self._mtls_client(conn, ura)

    def _mtls_client(self, conn: Connection, org: str) -> Client | None:
        row = conn.execute(select(auth_client).where(
            auth_client.c.org == org, auth_client.c.mtls.is_(True),
            auth_client.c.disabled.is_(False)).order_by(auth_client.c.client_id)
        ).mappings().first()
        return _client(row) if row is not None else None

    def _forget(self, client_id: str) -> None:
        with self._lock:
            self._cache.pop(client_id, None)

    # -- assertion replay -------------------------------------------------------------------

    def remember_jti(self, client_id: str, jti: str, expires: datetime) -> bool:
        """Record a client assertion's `jti`; False when it was seen before (a replay).

        The insert itself decides (primary key, ON CONFLICT DO NOTHING), so two requests
        racing with the same assertion cannot both win.
        """
        values = {"client_id": client_id, "jti": jti, "expires": self._db_time(expires)}
        if self.db.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[no-redef]
        stmt = (dialect_insert(auth_jti).values(**values).on_conflict_do_nothing()
                .returning(auth_jti.c.jti))
        with self.db.write() as conn:
            inserted = conn.execute(stmt).first() is not None
        self._purge_now_and_then()
        return inserted

    def _purge_now_and_then(self) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        cutoff = self._db_time(datetime.now(UTC) - PURGE_GRACE)
        with self.db.write() as conn:
            conn.execute(delete(auth_jti).where(auth_jti.c.expires < cutoff))

    def _db_time(self, t: datetime) -> datetime:
        # SQLite keeps naive text: UTC without offset keeps comparisons lexical.
        t = t.astimezone(UTC)
        return t.replace(tzinfo=None) if self.db.dialect == "sqlite" else t


def _client(row: Any) -> Client:
    return Client(
        client_id=row["client_id"], org=row["org"], name=row["name"], jwks=row["jwks"],
        scope=row["scope"], roles=tuple(Role(r) for r in row["roles"].split()),
        mtls=bool(row["mtls"]), disabled=bool(row["disabled"]), created=row["created"])


def _check_jwks(jwks: dict) -> None:
    """Public keys with a `kid` each, importable by joserfc."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError('the JWKS must be an object with a non-empty "keys" list')
    kids: set[str] = set()
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ClientError("every JWKS entry must be a JSON object")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise ClientError("the JWKS contains private or symmetric key material; register "
                              "public keys only")
        if jwk.get("kty") not in ("RSA", "EC"):
            raise ClientError("only RSA and EC keys can sign client assertions")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ClientError("every key needs a kid (client assertions name their key by it)")
        if kid in kids:
            raise ClientError(f"kid {kid!r} occurs twice in the JWKS")
        kids.add(kid)
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except Exception as exc:  # joserfc raises several types for a malformed key
        raise ClientError(f"the JWKS cannot be read: {type(exc).__name__}") from exc
