"""Access tokens: issued for SMART Backend Services client assertions, verified per request.

https://hl7.org/fhir/smart-app-launch/backend-services.html: a registered client proves who it
is with a JWT signed by one of its registered keys (`private_key_jwt`, RFC 7523) and gets a
short-lived ES256 access token signed by ekd's own key (`ekd.security.keys`). The token carries
the organisation of the client's *registration* (never anything the client asserts), the role,
the granted scopes and, where the client acts for a person, the user and the user on whose
behalf.

Verification happens on every request, so successful verifications are remembered (bounded
LRU, keyed by the token, until it expires): a repeat costs a dictionary lookup instead of an
ECDSA check. A hit still asks the client registry (itself cached for seconds) whether the
client is enabled, so disabling a client takes effect within that cache's lifetime.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from ekd.errors import Unauthorized
from ekd.security.clients import Client, ClientRegistry
from ekd.security.keys import ALGORITHM, KeyRing
from ekd.security.principal import Principal, Role
from ekd.security.scopes import Scope, narrow, parse_scopes

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: What client assertions may be signed with (SMART requires RS384 and ES384 support).
ASSERTION_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: SMART: a client assertion's `exp` is at most five minutes ahead.
MAX_ASSERTION_LIFETIME = 300
#: Clock skew tolerated between ekd nodes and clients (seconds): `nbf`/`iat` may lie this far
#: in the future, and an assertion's `exp` this far in the past. Access tokens expire without
#: leeway: ekd made them, and the holder can simply ask for a new one.
LEEWAY = 30
#: RFC 9068 media type of JWT access tokens, so that no other JWT signed by an ekd key (now or
#: later) can be passed off as one.
ACCESS_TOKEN_TYPE = "at+jwt"
#: Anything longer is no token of ours (ours are well under 2 KB).
MAX_TOKEN_LENGTH = 8192
CACHE_SIZE = 10_000

_ACCESS_REGISTRY = JWSRegistry(algorithms=[ALGORITHM])
# Client assertions may carry header members we do not know (x5t, jku, ...): not an error.
_ASSERTION_REGISTRY = JWSRegistry(algorithms=list(ASSERTION_ALGORITHMS),
                                  strict_check_header=False)


class TokenError(Exception):
    """A refused token request, as RFC 6749 §5.2 describes it. The description is shown to
    the client: it names what is wrong, never a token or key."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description

    @property
    def status(self) -> int:
        # RFC 6749 §5.2: 401 when client authentication failed, 400 for everything else.
        return 401 if self.error == "invalid_client" else 400

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, slots=True)
class _Verified:
    expires: float
    audience: str
    principal: Principal


class TokenService:
    def __init__(self, keys: KeyRing, clients: ClientRegistry, *, issuer: str, lifetime: int,
                 audience: str | None = None, cache_size: int = CACHE_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        if lifetime <= 0:
            raise ValueError("token lifetime must be positive")
        self.keys = keys
        self.clients = clients
        self.issuer = issuer
        #: Default `aud` of issued tokens (the FHIR base URL) when `issue` is given none.
        self.audience = audience or issuer
        self.lifetime = lifetime
        self.cache_size = cache_size
        #: Seconds since the epoch; tests move it to make tokens expired or not yet valid.
        self.clock = clock
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    # -- token endpoint ---------------------------------------------------------------------

    def issue(self, form: dict[str, str], token_url: str, *,
              audience: str | None = None) -> dict[str, Any]:
        """Answer a token request (the form fields of `POST /auth/token`).

        `token_url` is what the assertion's `aud` must be; `audience` is the FHIR base URL the
        access token is for (default: the service's). Raises `TokenError`.
        """
        grant_type = form.get("grant_type")
        if not grant_type:
            raise TokenError("invalid_request", "grant_type is required")
        if grant_type != GRANT_TYPE:
            raise TokenError("unsupported_grant_type", "only client_credentials is supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise TokenError("invalid_request", "client_assertion is required")
        requested = form.get("scope", "").strip()
        if not requested:
            raise TokenError("invalid_request", "scope is required")

        client, claims = self._authenticate(assertion, token_url, form.get("client_id"))
        role = self._role(client, claims.get("ekd_role"))
        user = _person(claims.get("ekd_user"), "ekd_user")
        on_behalf_of = _person(claims.get("ekd_on_behalf_of"), "ekd_on_behalf_of")
        _check_user(role, user, on_behalf_of)
        granted = narrow(parse_scopes(requested), client.scopes)
        if not granted:
            raise TokenError("invalid_scope",
                             "none of the requested scopes is allowed for this client")
        token = self._sign(client, role, granted, user, on_behalf_of,
                           audience or self.audience, self.lifetime)
        return {"access_token": token, "token_type": "bearer", "expires_in": self.lifetime,
                "scope": _scope_text(granted)}

    def _authenticate(self, assertion: str, token_url: str,
                      form_client_id: str | None) -> tuple[Client, dict[str, Any]]:
        """The client a valid, unused assertion proves, and the assertion's claims."""
        try:
            obj = jws.extract_compact(assertion.encode("ascii"))
            unverified = _claims(obj.payload)
        except (JoseError, ValueError, UnicodeError):
            raise TokenError("invalid_client", "client_assertion is not a well-formed JWT"
                             ) from None
        header = obj.headers()
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASSERTION_ALGORITHMS:
            raise TokenError("invalid_client", "client_assertion must be signed with one of "
                             + ", ".join(ASSERTION_ALGORITHMS))
        if not isinstance(kid, str) or not kid:
            raise TokenError("invalid_client", "client_assertion has no kid header")
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise TokenError("invalid_client", "client_assertion has no iss")
        if form_client_id is not None and form_client_id != client_id:
            raise TokenError("invalid_client", "client_id does not match the assertion's iss")
        client = self.clients.get(client_id)
        if client is None or client.disabled:
            # One answer for both: whether a client id exists is not the caller's business.
            raise TokenError("invalid_client", "unknown or disabled client")
        key_set = client.key_set()
        key: Key | None = None
        if key_set is not None:
            key = next((k for k in key_set if k.kid == kid), None)
        if key is None:
            raise TokenError("invalid_client", "no key with this kid is registered for the client")
        try:
            valid = jws.validate_compact(obj, key, registry=_ASSERTION_REGISTRY)
        except JoseError:
            valid = False  # e.g. an EC key named for an RS256 signature
        if not valid:
            raise TokenError("invalid_client", "client_assertion signature does not verify")

        now = self.clock()
        claims = unverified
        if claims.get("sub") != client_id:
            raise TokenError("invalid_client", "client_assertion sub must equal iss (client_id)")
        if not _audience_matches(claims.get("aud"), token_url):
            raise TokenError("invalid_client", f"client_assertion aud must be {token_url}")
        exp = claims.get("exp")
        if not _is_time(exp):
            raise TokenError("invalid_client", "client_assertion has no exp")
        if exp < now - LEEWAY:
            raise TokenError("invalid_client", "client_assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise TokenError("invalid_client",
                             "client_assertion exp is more than five minutes ahead")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not _is_time(value) or value > now + LEEWAY):
                raise TokenError("invalid_client", f"client_assertion {name} is in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise TokenError("invalid_client", "client_assertion needs a jti (1-255 characters)")
        if not self.clients.remember_jti(client_id, jti, datetime.fromtimestamp(exp, UTC)):
            raise TokenError("invalid_client", "client_assertion was used before (jti replay)")
        return client, claims

    @staticmethod
    def _role(client: Client, value: object) -> Role:
        if value is None:
            value = Role.SYSTEM.value
        try:
            role = Role(value) if isinstance(value, str) else None
        except ValueError:
            role = None
        if role is None:
            raise TokenError("invalid_request",
                             f"ekd_role must be one of {', '.join(r.value for r in Role)}")
        if role not in client.roles:
            raise TokenError("unauthorized_client",
                             f"the client may not act in the role {role.value}")
        return role

    # -- direct issue -----------------------------------------------------------------------

    def mint(self, client_id: str, *, role: str | Role, audience: str,
             user_id: str | None = None, user_name: str | None = None,
             on_behalf_of: str | None = None, on_behalf_of_name: str | None = None,
             scope: str | None = None, lifetime: int | None = None) -> str:
        """An access token without a client assertion (development mode, `ekd token create`):
        whoever can call this can read the signing key anyway. The client's registration still
        bounds organisation, role and scopes. Raises `TokenError`."""
        client = self.clients.get(client_id)
        if client is None or client.disabled:
            raise TokenError("invalid_client", f"client {client_id!r} is unknown or disabled")
        chosen = self._role(client, role.value if isinstance(role, Role) else role)
        user = {"id": user_id, "name": user_name or user_id} if user_id else None
        obo = ({"id": on_behalf_of, "name": on_behalf_of_name or on_behalf_of}
               if on_behalf_of else None)
        _check_user(chosen, user, obo)
        granted = narrow(parse_scopes(scope), client.scopes) if scope else client.scopes
        if not granted:
            raise TokenError("invalid_scope", "none of the requested scopes is allowed for "
                             "this client")
        if lifetime is not None and lifetime <= 0:
            raise TokenError("invalid_request", "lifetime must be positive")
        return self._sign(client, chosen, granted, user, obo, audience,
                          lifetime or self.lifetime)

    def _sign(self, client: Client, role: Role, scopes: tuple[Scope, ...],
              user: dict[str, str] | None, on_behalf_of: dict[str, str] | None,
              audience: str, lifetime: int) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": audience, "sub": client.client_id,
            "client_id": client.client_id, "iat": now, "nbf": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, "org": client.org, "role": role.value,
            "scope": _scope_text(scopes),
        }
        if user is not None:
            claims["user"] = user
        if on_behalf_of is not None:
            claims["on_behalf_of"] = on_behalf_of
        signing = self.keys.signing_key
        header = {"alg": ALGORITHM, "kid": signing.kid, "typ": ACCESS_TOKEN_TYPE}
        payload = json.dumps(claims, separators=(",", ":"))
        return jws.serialize_compact(header, payload, signing.key, registry=_ACCESS_REGISTRY)

    # -- per request ------------------------------------------------------------------------

    def verify(self, token: str, audience: str) -> Principal:
        """The caller a bearer token stands for. Raises `Unauthorized` with a reason that is
        safe to show (every reason mentions "token", which makes the WWW-Authenticate error
        `invalid_token`)."""
        now = self.clock()
        hit = self._cache.get(token)
        if hit is not None and hit.expires > now and hit.audience == audience:
            self._active_client(hit.principal.client_id, hit.principal.org)
            with self._lock:
                if token in self._cache:
                    self._cache.move_to_end(token)
            return hit.principal
        principal, expires = self._verify(token, audience, now)
        with self._lock:
            self._cache[token] = _Verified(expires, audience, principal)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return principal

    def forget_cached(self) -> None:
        """Drop remembered verifications (after a client was disabled elsewhere, in tests)."""
        with self._lock:
            self._cache.clear()

    def _verify(self, token: str, audience: str, now: float) -> tuple[Principal, float]:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The access token is malformed")
        try:
            obj = jws.extract_compact(token.encode("ascii"))
            claims = _claims(obj.payload)
        except (JoseError, ValueError, UnicodeError):
            raise Unauthorized("The access token is malformed") from None
        header = obj.headers()
        alg = header.get("alg")
        if alg == "none" or not alg:
            raise Unauthorized("Unsigned access tokens (alg none) are refused")
        if alg != ALGORITHM:
            raise Unauthorized(f"The access token must be signed with {ALGORITHM}")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise Unauthorized(f"The token is not an ekd access token (typ {ACCESS_TOKEN_TYPE})")
        kid = header.get("kid")
        key = self.keys.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthorized("The access token was signed by an unknown key (kid)")
        try:
            valid = jws.validate_compact(obj, key, registry=_ACCESS_REGISTRY)
        except JoseError:
            valid = False
        if not valid:
            raise Unauthorized("The access token signature does not verify")

        if claims.get("iss") != self.issuer:
            raise Unauthorized("The access token was issued by someone else (iss)")
        if not _audience_matches(claims.get("aud"), audience):
            raise Unauthorized("The access token is meant for another server (aud)")
        exp = claims.get("exp")
        if not _is_time(exp):
            raise Unauthorized("The access token has no expiry")
        if exp <= now:
            raise Unauthorized("The access token has expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not _is_time(value) or value > now + LEEWAY):
                raise Unauthorized(f"The access token is not valid yet ({name})")
        client_id, org = claims.get("sub"), claims.get("org")
        if not isinstance(client_id, str) or not isinstance(org, str):
            raise Unauthorized("The access token names no client or organisation")
        self._active_client(client_id, org)
        try:
            role = Role(claims.get("role"))
        except ValueError:
            raise Unauthorized("The access token names no known role") from None
        scope = claims.get("scope")
        user = claims.get("user") if isinstance(claims.get("user"), dict) else {}
        obo = claims.get("on_behalf_of") if isinstance(claims.get("on_behalf_of"), dict) else {}
        principal = Principal(
            org=org, client_id=client_id, role=role,
            scopes=parse_scopes(scope) if isinstance(scope, str) else (),
            user_id=_text(user.get("id")), user_name=_text(user.get("name")),
            on_behalf_of=_text(obo.get("id")), on_behalf_of_name=_text(obo.get("name")),
            via="token", token_id=_text(claims.get("jti")))
        return principal, float(exp)

    def _active_client(self, client_id: str, org: str) -> None:
        client = self.clients.get(client_id)
        if client is None:
            raise Unauthorized("The access token's client is not registered")
        if client.disabled:
            raise Unauthorized("The access token's client is disabled")
        if client.org != org:
            raise Unauthorized("The access token's organisation does not match its client")


def _claims(payload: bytes | None) -> dict[str, Any]:
    value = json.loads(payload or b"")
    if not isinstance(value, dict):
        raise ValueError("JWT claims must be a JSON object")
    return value


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _audience_matches(aud: object, expected: str) -> bool:
    if isinstance(aud, str):
        return aud == expected
    return isinstance(aud, list) and expected in aud


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _scope_text(scopes: tuple[Scope, ...]) -> str:
    return " ".join(str(s) for s in scopes)


def _person(value: object, claim: str) -> dict[str, str] | None:
    """`{"id", "name"}` from an assertion claim; the name defaults to the id."""
    if value is None:
        return None
    if not isinstance(value, dict) or not _text(value.get("id")):
        raise TokenError("invalid_request", f'{claim} must be an object with an "id"')
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise TokenError("invalid_request", f"{claim}.name must be a string")
    return {"id": value["id"], "name": name or value["id"]}


def _check_user(role: Role, user: dict[str, str] | None,
                on_behalf_of: dict[str, str] | None) -> None:
    """A person's role needs the person (NEN 7513 logs who acted); `on_behalf_of` needs a
    user who acts."""
    if role is not Role.SYSTEM and user is None:
        raise TokenError("invalid_request", f"the role {role.value} needs a user (ekd_user)")
    if on_behalf_of is not None and user is None:
        raise TokenError("invalid_request", "ekd_on_behalf_of needs a user (ekd_user)")
