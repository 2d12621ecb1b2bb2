"""Client keys and client assertions for tests (generated at test time, never committed)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey

_CURVES = {"ES256": "P-256", "ES384": "P-384"}


def make_client_key(alg: str = "ES384", kid: str | None = None) -> Key:
    """A private key for signing client assertions with `alg`, with a kid."""
    params = {"kid": kid} if kid else None
    if alg in _CURVES:
        key: Key = ECKey.generate_key(_CURVES[alg], parameters=params, private=True,
                                      auto_kid=kid is None)
    else:
        key = RSAKey.generate_key(2048, parameters=params, private=True, auto_kid=kid is None)
    return key


def public_jwks(*keys: Key) -> dict[str, Any]:
    """The JWKS a client registers: public parts only."""
    return {"keys": [{**k.as_dict(private=False), "kid": k.kid} for k in keys]}


def client_assertion(key: Key, client_id: str, token_url: str, *, alg: str | None = None,
                     kid: str | None = None, lifetime: int = 240, now: float | None = None,
                     jti: str | None = None, **claims: Any) -> str:
    """A SMART Backend Services client assertion; `claims` add to or override the standard
    ones (pass `name=None` to leave a claim out)."""
    now = time.time() if now is None else now
    body: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": token_url,
                            "exp": int(now + lifetime), "jti": jti or uuid.uuid4().hex}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    alg = alg or _alg_for(key)
    header = {"alg": alg, "kid": kid or key.kid, "typ": "JWT"}
    return jwt.encode(header, body, key, algorithms=[alg])


def token_form(assertion: str, scope: str = "system/*.rs", **extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion, "scope": scope, **extra}


def b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWT with an empty signature, crafted by hand (as an attacker would for `alg: none`)."""
    return f"{b64(header)}.{b64(claims)}."


def _alg_for(key: Key) -> str:
    if isinstance(key, ECKey):
        return "ES256" if key.curve_name == "P-256" else "ES384"
    return "RS384"
