"""Tokens: SMART Backend Services issue, per-request verification, keys, clients, endpoint.

Every storage-touching test runs on SQLite and on PostgreSQL (the `database` fixture).
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.jwk import ECKey, Key, OctKey
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from ekd.api import auth as api_auth
from ekd.api.errors import install as install_errors
from ekd.config import Settings
from ekd.errors import Unauthorized
from ekd.security import keys as keys_module
from ekd.security.clients import ClientError, ClientRegistry
from ekd.security.keys import KeyRing
from ekd.security.principal import Role
from ekd.security.service import DEV_CLIENT_ID, DEV_ORG, Security, SecurityConfigError
from ekd.security.tokens import TokenError, TokenService
from ekd.store.database import Database
from ekd.store.schema import auth_jti
from tests.auth_helpers import (
    b64,
    client_assertion,
    make_client_key,
    public_jwks,
    token_form,
    unsigned_token,
)

ISSUER = "https://ekd.test"
FHIR = "https://ekd.test/fhir"
TOKEN_URL = "https://ekd.test/auth/token"
URA = "12345678"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(mode="development", key_dir=str(tmp_path / "keys"), token_lifetime=300)


@pytest.fixture
def security(settings: Settings, database: Database) -> Security:
    return Security.build(settings, database, issuer=ISSUER)


@pytest.fixture
def client_key() -> Key:
    return make_client_key("ES384")


@pytest.fixture
def registered(security: Security, client_key: Key) -> str:
    security.clients.register("cb-app", URA, "CB-app Utrecht", public_jwks(client_key),
                              "system/*.rs user/*.cruds", ["jeugdarts", "doktersassistent",
                                                           "system"])
    return "cb-app"


def _issue(security: Security, assertion: str, scope: str = "system/*.rs") -> dict:
    return security.tokens.issue(token_form(assertion, scope), TOKEN_URL, audience=FHIR)


def _refused(security: Security, assertion: str, scope: str = "system/*.rs") -> TokenError:
    with pytest.raises(TokenError) as caught:
        _issue(security, assertion, scope)
    return caught.value


def _sign_access(security: Security, claims: dict, *, kid: str | None = None,
                 key: Key | None = None, alg: str = "ES256") -> str:
    """An access token signed outside TokenService (to reach checks after the signature)."""
    signing = security.keys.signing_key
    now = int(time.time())
    body = {"iss": ISSUER, "aud": FHIR, "sub": "cb-app", "iat": now, "nbf": now,
            "exp": now + 300, "jti": "x", "org": URA, "role": "system", "scope": "system/*.rs",
            **claims}
    header = {"alg": alg, "kid": kid or signing.kid, "typ": "at+jwt"}
    return jws.serialize_compact(header, json.dumps(body), key or signing.key,
                                 algorithms=[alg])


def _unauthorized(security: Security, token: str, audience: str = FHIR) -> str:
    with pytest.raises(Unauthorized) as caught:
        security.tokens.verify(token, audience)
    assert caught.value.status == 401
    assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"]
    return caught.value.diagnostics


# -- the full flow ----------------------------------------------------------------------------


def test_full_flow_user_context(security: Security, registered: str, client_key: Key) -> None:
    assertion = client_assertion(
        client_key, registered, TOKEN_URL, ekd_role="doktersassistent",
        ekd_user={"id": "900012345", "name": "A. Assistent"},
        ekd_on_behalf_of={"id": "900054321", "name": "J. Arts"},
        org="99999999")  # the client cannot choose its organisation
    answer = _issue(security, assertion, "user/Patient.rs user/Observation.cruds launch")
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 300
    assert answer["scope"] == "user/Patient.rs user/Observation.cruds"
    principal = security.tokens.verify(answer["access_token"], FHIR)
    assert principal.org == URA
    assert principal.client_id == "cb-app"
    assert principal.role is Role.DOKTERSASSISTENT
    assert (principal.user_id, principal.user_name) == ("900012345", "A. Assistent")
    assert (principal.on_behalf_of, principal.on_behalf_of_name) == ("900054321", "J. Arts")
    assert [str(s) for s in principal.scopes] == ["user/Patient.rs", "user/Observation.cruds"]
    assert principal.via == "token" and principal.token_id
    header = jws.extract_compact(answer["access_token"].encode()).headers()
    assert header == {"alg": "ES256", "kid": security.keys.signing_key.kid, "typ": "at+jwt"}


@pytest.mark.parametrize("alg", ["RS256", "RS384", "ES256", "ES384"])
def test_assertion_algorithms_and_system_default(security: Security, alg: str) -> None:
    key = make_client_key(alg)
    security.clients.register("sys", URA, "Sys", public_jwks(key), "system/*.rs", ["system"])
    answer = _issue(security, client_assertion(key, "sys", TOKEN_URL, alg=alg))
    principal = security.tokens.verify(answer["access_token"], FHIR)
    assert principal.role is Role.SYSTEM and principal.user_id is None
    assert answer["scope"] == "system/*.rs"


def test_assertion_with_hs256_refused(security: Security, registered: str) -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "k"})
    assertion = jws.serialize_compact({"alg": "HS256", "kid": "k"}, json.dumps(
        {"iss": registered, "sub": registered, "aud": TOKEN_URL,
         "exp": int(time.time()) + 60, "jti": "j"}), secret, algorithms=["HS256"])
    error = _refused(security, assertion)
    assert error.error == "invalid_client" and "signed with one of" in error.description


# -- token request failures -------------------------------------------------------------------


def test_request_parameters(security: Security, registered: str, client_key: Key) -> None:
    assertion = client_assertion(client_key, registered, TOKEN_URL)
    tokens = security.tokens
    for form, error in [
        ({**token_form(assertion), "grant_type": "password"}, "unsupported_grant_type"),
        ({k: v for k, v in token_form(assertion).items() if k != "grant_type"},
         "invalid_request"),
        ({**token_form(assertion), "client_assertion_type": "x"}, "invalid_request"),
        ({**token_form(assertion), "scope": ""}, "invalid_request"),
        ({**token_form(assertion), "client_assertion": "not.a.jwt"}, "invalid_client"),
        ({**token_form(assertion), "client_id": "someone-else"}, "invalid_client"),
    ]:
        with pytest.raises(TokenError) as caught:
            tokens.issue(form, TOKEN_URL, audience=FHIR)
        assert caught.value.error == error, form
    # none of these used up the assertion
    assert _issue(security, assertion)["access_token"]


def test_unregistered_and_disabled_client_cannot_get_token(security: Security,
                                                           client_key: Key) -> None:
    error = _refused(security, client_assertion(client_key, "ghost", TOKEN_URL))
    assert (error.error, error.status) == ("invalid_client", 401)
    security.clients.register("cb-app", URA, "CB", public_jwks(client_key), "system/*.rs",
                              ["system"])
    assert security.clients.disable("cb-app") is True
    error = _refused(security, client_assertion(client_key, "cb-app", TOKEN_URL))
    assert error.error == "invalid_client" and "disabled" in error.description


def test_assertion_signed_by_other_key_with_registered_kid(security: Security, registered: str,
                                                            client_key: Key) -> None:
    impostor = make_client_key("ES384", kid=client_key.kid)
    error = _refused(security, client_assertion(impostor, registered, TOKEN_URL))
    assert error.error == "invalid_client" and "signature" in error.description


def test_assertion_unknown_kid(security: Security, registered: str) -> None:
    error = _refused(security, client_assertion(make_client_key("ES384"), registered, TOKEN_URL))
    assert error.error == "invalid_client" and "kid" in error.description


def test_assertion_claims(security: Security, registered: str, client_key: Key) -> None:
    now = time.time()
    cases = [
        (dict(aud="https://elsewhere.test/auth/token"), "aud"),
        (dict(sub="other"), "sub"),
        (dict(exp=None), "exp"),
        (dict(lifetime=600), "five minutes"),
        (dict(now=now - 400), "expired"),
        (dict(nbf=int(now + 120)), "nbf"),
        (dict(jti=""), "jti"),
    ]
    for claims, reason in cases:
        jti = claims.pop("jti", None)
        assertion = client_assertion(client_key, registered, TOKEN_URL, **claims)
        if jti == "":
            parts = assertion.split(".")
            body = json.loads(jws.extract_compact(assertion.encode()).payload)
            del body["jti"]
            assertion = jws.serialize_compact(
                {"alg": "ES384", "kid": client_key.kid}, json.dumps(body), client_key,
                algorithms=["ES384"])
            assert parts[1] != assertion.split(".")[1]
        error = _refused(security, assertion)
        assert error.error == "invalid_client", claims
        assert reason in error.description, (claims, error.description)


def test_assertion_aud_as_list_accepted(security: Security, registered: str,
                                        client_key: Key) -> None:
    assertion = client_assertion(client_key, registered, TOKEN_URL, aud=[TOKEN_URL, "x"])
    assert _issue(security, assertion)["scope"] == "system/*.rs"


def test_replayed_assertion_refused(security: Security, registered: str, client_key,
                                    database: Database) -> None:
    assertion = client_assertion(client_key, registered, TOKEN_URL, jti="once")
    assert _issue(security, assertion)["access_token"]
    error = _refused(security, assertion)
    assert error.error == "invalid_client" and "replay" in error.description
    with database.read() as conn:
        rows = conn.execute(select(auth_jti.c.client_id, auth_jti.c.jti)).all()
    assert [tuple(r) for r in rows] == [("cb-app", "once")]


def test_role_must_be_registered(security: Security, registered: str, client_key: Key) -> None:
    user = {"id": "900012345", "name": "B. Heerder"}
    error = _refused(security, client_assertion(client_key, registered, TOKEN_URL,
                                                ekd_role="beheerder", ekd_user=user))
    assert (error.error, error.status) == ("unauthorized_client", 400)
    error = _refused(security, client_assertion(client_key, registered, TOKEN_URL,
                                                ekd_role="chirurg", ekd_user=user))
    assert error.error == "invalid_request" and "ekd_role" in error.description
    error = _refused(security, client_assertion(client_key, registered, TOKEN_URL,
                                                ekd_role="jeugdarts"))
    assert error.error == "invalid_request" and "ekd_user" in error.description


def test_system_role_must_be_registered_too(security: Security, client_key: Key) -> None:
    security.clients.register("ui", URA, "UI", public_jwks(client_key), "user/*.rs",
                              ["jeugdarts"])
    error = _refused(security, client_assertion(client_key, "ui", TOKEN_URL), "user/*.rs")
    assert error.error == "unauthorized_client" and "system" in error.description


def test_scopes_are_narrowed_to_registration(security: Security, client_key: Key) -> None:
    security.clients.register("narrow", URA, "N", public_jwks(client_key),
                              "system/Observation.rs system/Patient.r", ["system"])
    answer = _issue(security, client_assertion(client_key, "narrow", TOKEN_URL),
                    "system/Observation.cruds system/Patient.rs system/Encounter.r")
    assert answer["scope"] == "system/Observation.rs system/Patient.r"
    principal = security.tokens.verify(answer["access_token"], FHIR)
    assert [str(s) for s in principal.scopes] == ["system/Observation.rs", "system/Patient.r"]
    error = _refused(security, client_assertion(client_key, "narrow", TOKEN_URL),
                     "system/Encounter.rs user/*.cruds")
    assert (error.error, error.status) == ("invalid_scope", 400)


# -- access token verification ----------------------------------------------------------------


def _token(security: Security, registered: str, client_key: Key) -> str:
    return _issue(security, client_assertion(client_key, registered, TOKEN_URL))["access_token"]


def _service_at(security: Security, t: float, issuer: str = ISSUER) -> TokenService:
    return TokenService(security.keys, security.clients, issuer=issuer, lifetime=300,
                        clock=lambda: t)


def test_expired_token(security: Security, registered: str) -> None:
    old = _service_at(security, time.time() - 301).mint(registered, role="system",
                                                        audience=FHIR)
    assert "expired" in _unauthorized(security, old)
    fresh = _service_at(security, time.time() - 200).mint(registered, role="system",
                                                          audience=FHIR)
    assert security.tokens.verify(fresh, FHIR).org == URA


def test_not_yet_valid_token(security: Security, registered: str) -> None:
    early = _service_at(security, time.time() + 120).mint(registered, role="system",
                                                          audience=FHIR)
    assert "not valid yet" in _unauthorized(security, early)
    # a clock a few seconds ahead is within the leeway
    skewed = _service_at(security, time.time() + 10).mint(registered, role="system",
                                                          audience=FHIR)
    assert security.tokens.verify(skewed, FHIR).role is Role.SYSTEM


def test_wrong_audience_and_issuer(security: Security, registered: str, client_key: Key) -> None:
    token = _token(security, registered, client_key)
    assert security.tokens.verify(token, FHIR).org == URA  # cached now
    assert "another server" in _unauthorized(security, token, "https://other.test/fhir")
    foreign = _service_at(security, time.time(), issuer="https://other.test").mint(
        registered, role="system", audience=FHIR)
    assert "issued by someone else" in _unauthorized(security, foreign)


def test_wrong_signature_same_kid(security: Security, registered: str) -> None:
    other = ECKey.generate_key("P-256", private=True)
    forged = _sign_access(security, {}, key=other)  # kid of ekd's real key
    assert "signature does not verify" in _unauthorized(security, forged)
    genuine = _sign_access(security, {})
    assert security.tokens.verify(genuine, FHIR).client_id == "cb-app"


def test_alg_none_refused(security: Security, registered: str) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": FHIR, "sub": registered, "exp": now + 300, "iat": now,
              "org": URA, "role": "beheerder", "scope": "system/*.cruds"}
    for alg in ("none", "None"):
        forged = unsigned_token({"alg": alg, "typ": "at+jwt",
                                 "kid": security.keys.signing_key.kid}, claims)
        reason = _unauthorized(security, forged)
        assert "alg none" in reason or "ES256" in reason


def test_hs256_with_public_key_as_secret_refused(security: Security, registered: str) -> None:
    jwk = security.keys.public_jwks()["keys"][0]
    secret = OctKey.import_key(json.dumps(jwk).encode())
    forged = _sign_access(security, {}, key=secret, alg="HS256")
    assert "ES256" in _unauthorized(security, forged)


def test_unknown_kid(security: Security, registered: str) -> None:
    other = ECKey.generate_key("P-256", private=True)
    forged = _sign_access(security, {}, key=other, kid=other.thumbprint())
    assert "unknown key" in _unauthorized(security, forged)


def test_malformed_tokens(security: Security) -> None:
    for token in ("", "abc", "a.b.c", f"{b64(b'[1]')}.{b64({})}.", "x" * 9000,
                  f"{b64({'alg': 'ES256'})}.{b64(b'not json')}.AAAA"):
        assert _unauthorized(security, token)


def test_wrong_token_type_refused(security: Security, registered: str, client_key: Key) -> None:
    signing = security.keys.signing_key
    body = json.loads(jws.extract_compact(
        _token(security, registered, client_key).encode()).payload)
    as_jwt = jws.serialize_compact({"alg": "ES256", "kid": signing.kid, "typ": "JWT"},
                                   json.dumps(body), signing.key, algorithms=["ES256"])
    assert "not an ekd access token" in _unauthorized(security, as_jwt)


def test_unregistered_client_token(security: Security, registered: str) -> None:
    ghost = _sign_access(security, {"sub": "ghost"})
    assert "not registered" in _unauthorized(security, ghost)
    wrong_org = _sign_access(security, {"org": "87654321"})
    assert "organisation" in _unauthorized(security, wrong_org)


def test_disabled_client_token_stops_verifying(security: Security, registered: str,
                                               client_key: Key) -> None:
    token = _token(security, registered, client_key)
    assert security.tokens.verify(token, FHIR).client_id == registered  # and cached
    security.clients.disable(registered)
    assert "disabled" in _unauthorized(security, token)


def test_verification_cache(security: Security, registered: str, client_key,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token(security, registered, client_key)
    calls = []
    real = jws.validate_compact

    def counting(*args: object, **kwargs: object) -> bool:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jws, "validate_compact", counting)
    first = security.tokens.verify(token, FHIR)
    assert security.tokens.verify(token, FHIR) is first
    assert len(calls) == 1
    # a cached token still expires
    clock = [time.time() + 301]
    late = TokenService(security.keys, security.clients, issuer=ISSUER, lifetime=300,
                        clock=lambda: clock[0])
    late._cache.update(security.tokens._cache)
    assert "expired" in _unauthorized_with(late, token)
    # bounded
    small = TokenService(security.keys, security.clients, issuer=ISSUER, lifetime=300,
                         cache_size=2)
    for _ in range(3):
        small.verify(small.mint(registered, role="system", audience=FHIR), FHIR)
    assert len(small._cache) == 2


def _unauthorized_with(tokens: TokenService, token: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        tokens.verify(token, FHIR)
    return caught.value.diagnostics


# -- keys -------------------------------------------------------------------------------------


def test_key_files_private_and_kid_is_thumbprint(security: Security, settings: Settings) -> None:
    files = list(Path(settings.key_dir).glob("*.pem"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    key = ECKey.import_key(files[0].read_bytes())
    assert security.keys.signing_key.kid == key.thumbprint()
    assert files[0].name.endswith(f"-{key.thumbprint()}.pem")
    jwks = security.keys.public_jwks()
    assert [k["kid"] for k in jwks["keys"]] == [key.thumbprint()]
    assert "d" not in jwks["keys"][0] and jwks["keys"][0]["crv"] == "P-256"


def test_key_rotation(security: Security, registered: str, settings: Settings,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    other_worker = KeyRing.load(settings.key_dir)
    old_kid = security.keys.signing_key.kid
    old_token = security.tokens.mint(registered, role="system", audience=FHIR)
    new_kid = security.keys.rotate()
    assert new_kid != old_kid and security.keys.signing_key.kid == new_kid
    new_token = security.tokens.mint(registered, role="system", audience=FHIR)
    assert jws.extract_compact(new_token.encode()).headers()["kid"] == new_kid
    security.tokens.forget_cached()
    assert security.tokens.verify(old_token, FHIR).client_id == registered
    assert security.tokens.verify(new_token, FHIR).client_id == registered
    reloaded = KeyRing.load(settings.key_dir)
    assert [k.kid for k in reloaded.keys] == [old_kid, new_kid]
    assert reloaded.signing_key.kid == new_kid
    assert {k["kid"] for k in security.keys.public_jwks()["keys"]} == {old_kid, new_kid}
    # a worker that loaded its keys before the rotation finds the new key on first sight
    monkeypatch.setattr(keys_module, "REFRESH_INTERVAL", 0.0)
    worker_tokens = TokenService(other_worker, security.clients, issuer=ISSUER, lifetime=300)
    assert worker_tokens.verify(new_token, FHIR).client_id == registered


def test_security_build_modes(tmp_path: Path, database: Database) -> None:
    production = Settings(mode="production", key_dir=str(tmp_path / "prod-keys"))
    with pytest.raises(SecurityConfigError, match="ekd keys rotate"):
        Security.build(production, database, issuer=ISSUER)
    assert not (tmp_path / "prod-keys").exists()  # production makes no keys
    KeyRing.load(production.key_dir).rotate()
    with pytest.raises(SecurityConfigError, match="ekd client add"):
        Security.build(production, database, issuer=ISSUER)
    ClientRegistry(database).register("c", URA, "C", public_jwks(make_client_key()),
                                      "system/*.rs", ["system"])
    security = Security.build(production, database, issuer=ISSUER)
    with pytest.raises(SecurityConfigError):
        security.ensure_dev_client(audience=FHIR)

    dev = Settings(mode="development", key_dir=str(tmp_path / "dev-keys"))
    security = Security.build(dev, database, issuer=ISSUER)
    assert len(security.keys) == 1
    token = security.ensure_dev_client(Role.BEHEERDER, audience=FHIR)
    again = security.ensure_dev_client("system", audience=FHIR)  # idempotent
    p1, p2 = security.tokens.verify(token, FHIR), security.tokens.verify(again, FHIR)
    assert (p1.org, p1.client_id, p1.role, p1.user_id) == (DEV_ORG, DEV_CLIENT_ID,
                                                           Role.BEHEERDER, "ontwikkelaar")
    assert (p2.role, p2.user_id) == (Role.SYSTEM, None)
    assert [c.client_id for c in security.clients.list()] == ["c", DEV_CLIENT_ID]
    other_org = security.ensure_dev_client(audience=FHIR, org="90000002")
    assert security.tokens.verify(other_org, FHIR).org == "90000002"


def test_mint_respects_registration(security: Security, registered: str) -> None:
    with pytest.raises(TokenError) as caught:
        security.tokens.mint("ghost", role="system", audience=FHIR)
    assert caught.value.error == "invalid_client"
    with pytest.raises(TokenError) as caught:
        security.tokens.mint(registered, role="beheerder", user_id="u", audience=FHIR)
    assert caught.value.error == "unauthorized_client"
    with pytest.raises(TokenError) as caught:
        security.tokens.mint(registered, role="system", scope="system/*.c", audience=FHIR)
    assert caught.value.error == "invalid_scope"
    token = security.tokens.mint(registered, role="jeugdarts", user_id="900011111",
                                 scope="user/Observation.rs", lifetime=60, audience=FHIR)
    principal = security.tokens.verify(token, FHIR)
    assert (principal.user_id, principal.user_name) == ("900011111", "900011111")
    assert [str(s) for s in principal.scopes] == ["user/Observation.rs"]
    exp = json.loads(jws.extract_compact(token.encode()).payload)["exp"]
    assert 55 <= exp - time.time() <= 61


# -- clients ----------------------------------------------------------------------------------


def test_client_registration_checks(database: Database) -> None:
    registry = ClientRegistry(database)
    key = make_client_key()
    good = public_jwks(key)
    bad = [
        (dict(jwks={"keys": [key.as_dict(private=True)]}), "private"),
        (dict(jwks={"keys": [{k: v for k, v in good["keys"][0].items() if k != "kid"}]}),
         "kid"),
        (dict(jwks={"keys": []}), "keys"),
        (dict(roles=["chirurg"]), "role"),
        (dict(scope="openid"), "scope"),
        (dict(org="URA-1"), "URA"),
    ]
    for change, reason in bad:
        args = dict(client_id="c", org=URA, name="C", jwks=good, scope="system/*.rs",
                    roles=["system"], **{})
        args.update(change)
        with pytest.raises(ClientError, match=reason):
            registry.register(**args)  # type: ignore[arg-type]
    client = registry.register("c", URA, "C", good, "system/*.rs", ["system", "beheerder"])
    assert client.roles == (Role.SYSTEM, Role.BEHEERDER) and client.jwks == good
    with pytest.raises(ClientError, match="already registered"):
        registry.register("c", URA, "C", good, "system/*.rs", ["system"])


def test_mtls_client_lookup(database: Database) -> None:
    registry = ClientRegistry(database)
    registry.register("plain", URA, "P", public_jwks(make_client_key()), "system/*.rs",
                      ["system"])
    assert registry.by_mtls_org(URA) is None
    registry.register("tls", URA, "T", None, "system/*.rs", ["system"], mtls=True)
    with pytest.raises(ClientError, match="mutual-TLS"):
        registry.register("tls2", URA, "T2", None, "system/*.rs", ["system"], mtls=True)
    found = registry.by_mtls_org(URA)
    assert found is not None and found.client_id == "tls"
    assert registry.by_mtls_org("87654321") is None
    registry.disable("tls")
    assert registry.by_mtls_org(URA) is None


def test_remember_jti_race_and_purge(database: Database) -> None:
    registry = ClientRegistry(database)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        results.append(registry.remember_jti("c", "same", expires))

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert registry.remember_jti("other-client", "same", expires) is True
    # long-expired rows go at the next purge; live ones stay
    old = datetime.now(UTC) - timedelta(hours=1)
    with database.write() as conn:
        conn.execute(insert(auth_jti).values(
            client_id="c", jti="old",
            expires=old.replace(tzinfo=None) if database.dialect == "sqlite" else old))
    registry._next_purge = 0.0
    assert registry.remember_jti("c", "new", expires) is True
    with database.read() as conn:
        jtis = {r.jti for r in conn.execute(select(auth_jti.c.jti))}
        count = conn.execute(select(func.count()).select_from(auth_jti)).scalar_one()
    assert jtis == {"same", "new"} and count == 3


# -- HTTP -------------------------------------------------------------------------------------


def _app(security: Security, settings: Settings) -> TestClient:
    app = FastAPI()
    install_errors(app)
    app.include_router(api_auth.router(security, settings))

    @app.get("/fhir/whoami")
    def whoami(request: Request) -> dict:
        principal = api_auth.bearer_principal(security, request,
                                              api_auth.fhir_base(settings, request))
        if principal is None:
            return {"anonymous": True}
        return {"org": principal.org, "role": principal.role.value, "source": principal.source}

    return TestClient(app)


def test_token_endpoint(security: Security, settings: Settings, registered: str,
                        client_key: Key) -> None:
    http = _app(security, settings)
    token_url = "http://testserver/auth/token"
    ok = http.post("/auth/token", data=token_form(
        client_assertion(client_key, registered, token_url), "system/*.rs"))
    assert ok.status_code == 200, ok.text
    assert ok.headers["cache-control"] == "no-store"
    body = ok.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    me = http.get("/fhir/whoami", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"org": URA, "role": "system", "source": "testclient"}
    assert http.get("/fhir/whoami").json() == {"anonymous": True}

    bad_grant = http.post("/auth/token", data={**token_form("x"), "grant_type": "password"})
    assert bad_grant.status_code == 400
    assert bad_grant.json()["error"] == "unsupported_grant_type"
    assert bad_grant.headers["cache-control"] == "no-store"
    impostor = make_client_key("ES384", kid=client_key.kid)
    bad_sig = http.post("/auth/token", data=token_form(
        client_assertion(impostor, registered, token_url)))
    assert bad_sig.status_code == 401
    assert bad_sig.json() == {"error": "invalid_client",
                              "error_description": "client_assertion signature does not verify"}
    wrong_aud = http.post("/auth/token", data=token_form(
        client_assertion(client_key, registered, TOKEN_URL)))
    assert (wrong_aud.status_code, wrong_aud.json()["error"]) == (401, "invalid_client")
    as_json = http.post("/auth/token", json=token_form("x"))
    assert (as_json.status_code, as_json.json()["error"]) == (400, "invalid_request")
    twice = http.post("/auth/token", content="grant_type=a&grant_type=b",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert twice.status_code == 400 and "more than once" in twice.json()["error_description"]
    scope = http.post("/auth/token", data=token_form(
        client_assertion(client_key, registered, token_url), "system/*.cud"))
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")


def test_bearer_errors_are_operation_outcomes(security: Security, settings: Settings,
                                              registered: str) -> None:
    http = _app(security, settings)
    for header in ("Basic dXNlcjpwdw==", "Bearer", "Bearer a b", "Bearer not-a-token"):
        answer = http.get("/fhir/whoami", headers={"Authorization": header})
        assert answer.status_code == 401, header
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert answer.headers["www-authenticate"].startswith('Bearer realm="ekd"')
        assert "not-a-token" not in answer.text
    # a token for another audience (the configured FHIR base differs from this server's)
    token = security.tokens.mint(registered, role="system", audience=FHIR)
    answer = http.get("/fhir/whoami", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and "another server" in answer.text


def test_discovery_and_jwks(security: Security, settings: Settings) -> None:
    http = _app(security, settings)
    config = http.get("/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == "http://testserver/auth/token"
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert config["grant_types_supported"] == ["client_credentials"]
    jwks = http.get("/auth/jwks").json()
    assert [k["kid"] for k in jwks["keys"]] == [security.keys.signing_key.kid]
    assert all("d" not in k for k in jwks["keys"])


def test_base_url_decides_token_url_and_audience(security: Security, settings: Settings,
                                                 registered: str, client_key: Key) -> None:
    configured = Settings(mode="development", key_dir=settings.key_dir,
                          base_url="https://ekd.example.nl/fhir")
    http = _app(security, configured)
    assert http.get("/.well-known/smart-configuration").json()["token_endpoint"] == (
        "https://ekd.example.nl/auth/token")
    answer = http.post("/auth/token", data=token_form(client_assertion(
        client_key, registered, "https://ekd.example.nl/auth/token")))
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    assert security.tokens.verify(token, "https://ekd.example.nl/fhir").org == URA
    assert http.get("/fhir/whoami",
                    headers={"Authorization": f"Bearer {token}"}).json()["org"] == URA


# -- CLI --------------------------------------------------------------------------------------


def test_cli_client_and_token(tmp_path: Path, database: Database) -> None:
    from ekd.cli.main import app

    key = make_client_key("RS384")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(public_jwks(key)))
    env = {"EKD_DATABASE_URL": database.url.render_as_string(hide_password=False),
           "EKD_KEY_DIR": str(tmp_path / "keys"), "EKD_MODE": "development"}
    runner = CliRunner()
    added = runner.invoke(app, ["client", "add", "--client-id", "cb", "--ura", URA, "--name",
                                "CB", "--jwks", str(jwks_file), "--scope", "user/*.rs",
                                "--roles", "jeugdarts,beheerder"], env=env)
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["client", "list"], env=env)
    assert listed.stdout.splitlines()[0].split("\t")[:4] == ["cb", URA, "enabled",
                                                             "jeugdarts,beheerder"]
    made = runner.invoke(app, ["token", "create", "--client-id", "cb", "--role", "jeugdarts",
                               "--user", "900012345", "--audience", FHIR], env=env)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert "\n" not in token and token.count(".") == 2
    ring = KeyRing.load(tmp_path / "keys")
    service = TokenService(ring, ClientRegistry(database), issuer="http://127.0.0.1:8080",
                           lifetime=300)
    assert service.verify(token, FHIR).user_id == "900012345"
    refused = runner.invoke(app, ["token", "create", "--client-id", "cb", "--role", "system"],
                            env=env)
    assert refused.exit_code == 1 and refused.stdout == ""
    rotated = runner.invoke(app, ["keys", "rotate"], env=env)
    assert rotated.exit_code == 0 and rotated.stdout.strip() in {
        k.kid for k in KeyRing.load(tmp_path / "keys").keys}
    assert runner.invoke(app, ["client", "disable", "cb"], env=env).exit_code == 0
    assert runner.invoke(app, ["client", "disable", "nope"], env=env).exit_code == 1
    assert os.path.isdir(tmp_path / "keys")
