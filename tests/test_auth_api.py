"""Bearer tokens through the real FHIR API: every bad token is refused with 401 (403 for a scope
that does not cover the request), an OperationOutcome, a `WWW-Authenticate: Bearer` challenge
and without the token echoed; the full SMART Backend Services flow over HTTP; and the few
endpoints that answer without a token. On both backends.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.jwk import ECKey, Key

from ekd.api.app import create_app
from ekd.interaction.base import Services
from ekd.security.principal import Role
from ekd.security.service import Security
from ekd.security.tokens import TokenService
from tests.app_helpers import TEST_ORG, security_for, token
from tests.auth_helpers import (
    client_assertion,
    make_client_key,
    public_jwks,
    token_form,
    unsigned_token,
)
from tests.fhir_helpers import JSON, id_from_location, patient

FHIR = "http://testserver/fhir"
ISSUER = "http://testserver"
TOKEN_URL = "http://testserver/auth/token"
FAMILY = "Geheimhouding"


@dataclass
class Api:
    http: TestClient
    services: Services
    security: Security
    patient_id: str

    def get_patient(self, authorization: str | None) -> object:
        headers = {"Accept": JSON}
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.http.get(f"/fhir/Patient/{self.patient_id}", headers=headers)


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    security = security_for(services)
    assert security.tokens.issuer == ISSUER
    with TestClient(create_app(services=services, security=security),
                    raise_server_exceptions=False) as http:
        good = token(security, services)
        created = http.post("/fhir/Patient", json=patient(FAMILY),
                            headers={"Authorization": f"Bearer {good}", "Content-Type": JSON})
        assert created.status_code == 201, created.text
        yield Api(http, services, security, id_from_location(created.headers["location"]))


def _claims(security: Security, **overrides: object) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": FHIR, "sub": f"test-{TEST_ORG}",
              "client_id": f"test-{TEST_ORG}", "iat": now, "nbf": now, "exp": now + 300,
              "jti": uuid.uuid4().hex, "org": TEST_ORG, "role": "system",
              "scope": "system/*.cruds"}
    claims.update(overrides)
    return claims


def _signed(claims: dict, key: Key, kid: str, alg: str = "ES256") -> str:
    header = {"alg": alg, "kid": kid, "typ": "at+jwt"}
    return jws.serialize_compact(header, json.dumps(claims), key, algorithms=[alg])


def _at(security: Security, t: float) -> TokenService:
    """ekd's token service with its clock at `t` (same keys, clients and issuer)."""
    return TokenService(security.keys, security.clients, issuer=security.tokens.issuer,
                        lifetime=300, clock=lambda: t)


def _refused(api: Api, authorization: str, reason: str, *, secret: str | None = None,
             error: str | None = "invalid_token") -> None:
    answer = api.get_patient(authorization)
    assert answer.status_code == 401, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["login"]
    assert reason in body["issue"][0]["diagnostics"], body
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="ekd"'), challenge
    if error is not None:
        assert f'error="{error}"' in challenge
    assert FAMILY not in answer.text  # nothing of the patient
    secret = secret if secret is not None else authorization.partition(" ")[2]
    if secret:
        # the token is never echoed, neither in the body nor in any header
        assert secret not in answer.text
        assert all(secret not in v for v in answer.headers.values())
        for part in secret.split(".")[1:]:
            if len(part) > 16:
                assert part not in answer.text


def test_control_the_good_token_reads(api: Api) -> None:
    good = token(api.security, api.services)
    answer = api.get_patient(f"Bearer {good}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == [{"family": FAMILY}]


def test_expired_token(api: Api) -> None:
    old = _at(api.security, time.time() - 301).mint(f"test-{TEST_ORG}", role="system",
                                                    audience=FHIR)
    _refused(api, f"Bearer {old}", "expired")


def test_not_yet_valid_token(api: Api) -> None:
    early = _at(api.security, time.time() + 120).mint(f"test-{TEST_ORG}", role="system",
                                                      audience=FHIR)
    _refused(api, f"Bearer {early}", "not valid yet")
    # within the 30 s leeway a slightly fast clock is fine (the control for the above)
    skewed = _at(api.security, time.time() + 5).mint(f"test-{TEST_ORG}", role="system",
                                                     audience=FHIR)
    assert api.get_patient(f"Bearer {skewed}").status_code == 200


def test_wrong_audience(api: Api) -> None:
    token(api.security, api.services)  # registers the client
    elsewhere = api.security.tokens.mint(f"test-{TEST_ORG}", role="system",
                                         audience="https://ekd.elders.example/fhir")
    _refused(api, f"Bearer {elsewhere}", "another server (aud)")


def test_wrong_signature_same_kid(api: Api) -> None:
    impostor = ECKey.generate_key("P-256", private=True)
    forged = _signed(_claims(api.security), impostor, api.security.keys.signing_key.kid)
    _refused(api, f"Bearer {forged}", "signature does not verify")
    # the same claims signed by ekd's key do work
    genuine = _signed(_claims(api.security), api.security.keys.signing_key.key,
                      api.security.keys.signing_key.kid)
    assert api.get_patient(f"Bearer {genuine}").status_code == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(api: Api, alg: str) -> None:
    forged = unsigned_token({"alg": alg, "typ": "at+jwt",
                             "kid": api.security.keys.signing_key.kid},
                            _claims(api.security, role="beheerder"))
    reason = "alg none" if alg == "none" else "must be signed with ES256"
    _refused(api, f"Bearer {forged}", reason)


def test_unknown_kid(api: Api) -> None:
    other = ECKey.generate_key("P-256", private=True)
    forged = _signed(_claims(api.security), other, other.thumbprint())
    _refused(api, f"Bearer {forged}", "unknown key (kid)")


def test_token_of_unregistered_client(api: Api) -> None:
    ghost = _signed(_claims(api.security, sub="ghost-client", client_id="ghost-client"),
                    api.security.keys.signing_key.key, api.security.keys.signing_key.kid)
    _refused(api, f"Bearer {ghost}", "client is not registered")


def test_token_of_disabled_client(api: Api) -> None:
    api.security.clients.register("soon-gone", TEST_ORG, "Soon gone", None, "system/*.rs",
                                  ["system"])
    doomed = api.security.tokens.mint("soon-gone", role="system", audience=FHIR)
    assert api.get_patient(f"Bearer {doomed}").status_code == 200  # and cached as verified
    assert api.security.clients.disable("soon-gone")
    _refused(api, f"Bearer {doomed}", "client is disabled")


@pytest.mark.parametrize("authorization", [
    "Bearer", "Bearer ", "Basic dXNlcjpwYXNzd29yZA==", "Bearer two tokens", "Token abc.def.ghi",
])
def test_malformed_authorization_header(api: Api, authorization: str) -> None:
    secret = "dXNlcjpwYXNzd29yZA==" if authorization.startswith("Basic") else ""
    # (which error code the challenge should carry: test_challenge_error_codes_follow_rfc6750)
    _refused(api, authorization, "must be 'Bearer <access token>'", secret=secret, error=None)


def test_garbage_token(api: Api) -> None:
    _refused(api, "Bearer not.a.jwt-at-all", "malformed")


def test_no_credentials_at_all(api: Api) -> None:
    answer = api.get_patient(None)
    assert answer.status_code == 401
    assert [i["code"] for i in answer.json()["issue"]] == ["login"]
    assert answer.headers["www-authenticate"].startswith('Bearer realm="ekd"')
    assert FAMILY not in answer.text


def test_scope_too_narrow_is_forbidden(api: Api) -> None:
    narrow = token(api.security, api.services, role=Role.JEUGDARTS, scope="user/Observation.rs")
    answer = api.get_patient(f"Bearer {narrow}")
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["forbidden"]
    assert "scopes do not allow read on Patient" in body["issue"][0]["diagnostics"]
    assert FAMILY not in answer.text and narrow not in answer.text
    # the same token may read what its scope covers
    search = api.http.get("/fhir/Observation", headers={"Authorization": f"Bearer {narrow}"})
    assert search.status_code == 200, search.text


def test_challenge_error_codes_follow_rfc6750(api: Api) -> None:
    missing = api.get_patient(None).headers["www-authenticate"]
    assert "error=" not in missing
    malformed = api.get_patient("Bearer").headers["www-authenticate"]
    assert 'error="invalid_request"' in malformed


# -- the SMART Backend Services flow over HTTP ---------------------------------------------------


def test_smart_backend_services_flow(api: Api) -> None:
    key = make_client_key("ES384")
    api.security.clients.register("cb-systeem", TEST_ORG, "CB systeem", public_jwks(key),
                                  "system/*.cruds", ["system"])
    assertion = client_assertion(key, "cb-systeem", TOKEN_URL)
    granted = api.http.post("/auth/token", data=token_form(assertion, "system/Patient.cruds"))
    assert granted.status_code == 200, granted.text
    assert granted.headers["cache-control"] == "no-store"
    body = granted.json()
    assert body["token_type"] == "bearer" and body["scope"] == "system/Patient.cruds"
    access = body["access_token"]
    auth = {"Authorization": f"Bearer {access}"}

    created = api.http.post("/fhir/Patient", json=patient("Flow", bsn=None),
                            headers={**auth, "Content-Type": JSON})
    assert created.status_code == 201, created.text
    new_id = id_from_location(created.headers["location"])
    assert api.http.get(f"/fhir/Patient/{new_id}", headers=auth).status_code == 200
    # same organisation: the fixture's patient is visible too
    assert api.get_patient(f"Bearer {access}").status_code == 200
    # the granted scope covers Patient only
    obs = api.http.get("/fhir/Observation", headers=auth)
    assert obs.status_code == 403 and obs.json()["issue"][0]["code"] == "forbidden"

    # the assertion cannot be replayed
    again = api.http.post("/auth/token", data=token_form(assertion, "system/Patient.cruds"))
    assert again.status_code == 401 and again.json()["error"] == "invalid_client"
    assert "replay" in again.json()["error_description"]

    # the access token is refused by a server with another FHIR base (its audience), though
    # that server shares ekd's keys, clients, issuer and database
    other_settings = replace(api.services.settings, base_url="https://ekd-b.example.nl/fhir")
    other_services = replace(api.services, settings=other_settings)
    other_security = Security.build(other_settings, api.services.db,
                                    issuer=api.security.tokens.issuer)
    assert other_security.keys.signing_key.kid == api.security.keys.signing_key.kid
    with TestClient(create_app(services=other_services, security=other_security),
                    raise_server_exceptions=False) as other:
        refused = other.get(f"/fhir/Patient/{new_id}", headers=auth)
        assert refused.status_code == 401, refused.text
        assert refused.json()["issue"][0]["code"] == "login"
        assert "another server (aud)" in refused.json()["issue"][0]["diagnostics"]
        assert access not in refused.text and "Flow" not in refused.text
        # control: a token for that server's base does work there
        theirs = other_security.tokens.mint("cb-systeem", role="system",
                                            audience="https://ekd-b.example.nl/fhir")
        assert other.get(f"/fhir/Patient/{new_id}",
                         headers={"Authorization": f"Bearer {theirs}"}).status_code == 200


def test_token_endpoint_refuses_unregistered_and_disabled_clients(api: Api) -> None:
    key = make_client_key("ES256")
    unknown = api.http.post("/auth/token", data=token_form(
        client_assertion(key, "nobody", TOKEN_URL)))
    assert unknown.status_code == 401
    assert unknown.json() == {"error": "invalid_client",
                              "error_description": "unknown or disabled client"}
    api.security.clients.register("locked", TEST_ORG, "Locked", public_jwks(key),
                                  "system/*.rs", ["system"])
    api.security.clients.disable("locked")
    disabled = api.http.post("/auth/token", data=token_form(
        client_assertion(key, "locked", TOKEN_URL)))
    assert disabled.status_code == 401 and disabled.json() == unknown.json()


# -- what answers without a token ----------------------------------------------------------------


def test_public_endpoints_answer_without_token(api: Api) -> None:
    metadata = api.http.get("/fhir/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"
    smart = api.http.get("/.well-known/smart-configuration")
    assert smart.status_code == 200
    assert smart.json()["token_endpoint"] == TOKEN_URL
    live = api.http.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    jwks = api.http.get("/auth/jwks")
    assert jwks.status_code == 200
    assert [k["kid"] for k in jwks.json()["keys"]] == [api.security.keys.signing_key.kid]


@pytest.mark.parametrize("method,path", [
    ("GET", "/fhir/Patient"),
    ("GET", "/fhir/Patient/{id}/_history"),
    ("GET", "/fhir/Patient/{id}/$everything"),
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/fhir/StructureDefinition"),
    ("POST", "/fhir/Patient"),
    ("POST", "/fhir"),
    ("DELETE", "/fhir/Patient/{id}"),
])
def test_everything_else_needs_a_token(api: Api, method: str, path: str) -> None:
    kwargs: dict = {}
    if method == "POST":
        kwargs = {"json": patient("Anoniem") if path.endswith("Patient")
                  else {"resourceType": "Bundle", "type": "batch", "entry": []},
                  "headers": {"Content-Type": JSON}}
    answer = api.http.request(method, path.format(id=api.patient_id), **kwargs)
    assert answer.status_code == 401, answer.text
    assert answer.json()["issue"][0]["code"] == "login"
    assert answer.headers["www-authenticate"].startswith("Bearer ")
    # nothing was deleted or created
    good = token(api.security, api.services)
    assert api.get_patient(f"Bearer {good}").status_code == 200
    listed = api.http.get("/fhir/Patient", headers={"Authorization": f"Bearer {good}"})
    assert [e["resource"]["id"] for e in listed.json().get("entry", [])] == [api.patient_id]
