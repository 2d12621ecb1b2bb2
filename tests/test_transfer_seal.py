"""Sealing a dossier (`ekd.transfer.seal`) and trusting its signer (`ekd.exchange.trust`).

Why these tests: a package comes from another organisation, so every byte of it is attacker
controlled. Each crypto row of TRANSFER.md's threat table gets a test at this level (altered
payload or envelope, tampered JWE parts, wrong recipient, bad certificates, algorithm downgrade,
header key injection, zip, oversized tokens). Attack tokens are built by hand with
`cryptography` and base64, not with joserfc, so they reach *our* checks; a hand-crafted token
that follows the rules is shown to pass first, so each rejection is due to the one thing the
attack changes. Every assertion pins the `SealError.code`, so a check that went missing would
surface as another code and fail the test.

Real keys from the test PKI; round trips run for EC (ES256, ECDH-ES+A256KW) and RSA (PS256,
RSA-OAEP-256).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.jwk import ECKey, RSAKey

from ekd.exchange import pki as pki_module
from ekd.exchange.pki import Pki, init
from ekd.exchange.trust import CertificateRejected, Credentials, Trust
from ekd.transfer import seal
from ekd.transfer.seal import SealError

SENDER, RECIPIENT, OTHER = "90000001", "90000002", "90000003"
URA_SYSTEM = "http://fhir.nl/fhir/NamingSystem/ura"


# --- the world: one PKI, three organisations --------------------------------------------------

@dataclass
class World:
    pki: Pki
    trust: Trust
    sender: Credentials
    recipient: Credentials
    other: Credentials
    key_type: str


def _world(folder: Path, key_type: str) -> World:
    pki = init(folder, key_type=key_type)  # type: ignore[arg-type]

    def creds(ura: str, name: str) -> Credentials:
        issued = pki.issue(ura, name, key_type=key_type)  # type: ignore[arg-type]
        return Credentials.load(issued.cert_path, issued.key_path, issued.chain_path)

    return World(pki=pki, trust=Trust.load(folder / "root.pem", pki.crl_path),
                 sender=creds(SENDER, "Consultatiebureau Oost"),
                 recipient=creds(RECIPIENT, "GGD West"), other=creds(OTHER, "GGD Noord"),
                 key_type=key_type)


@pytest.fixture(scope="module", params=["ec", "rsa"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    """Shared per key type; tests using it must not revoke or rewrite the CRL."""
    return _world(tmp_path_factory.mktemp(f"pki-{request.param}"), request.param)


@pytest.fixture(scope="module")
def rsa_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _world(tmp_path_factory.mktemp("pki-rsa-attacks"), "rsa")


@pytest.fixture
def fresh(tmp_path: Path) -> World:
    """A world of its own (EC: milliseconds) for tests that revoke or break the CRL."""
    return _world(tmp_path / "pki", "ec")


def dossier(recipient: str = RECIPIENT) -> dict[str, Any]:
    """A message Bundle shaped like `ekd.transfer.package.build`'s: envelope first."""
    return {
        "resourceType": "Bundle", "id": "bundle-1",
        "meta": {"lastUpdated": "2025-01-01T10:00:00Z", "versionId": "1"},
        "type": "message",
        "identifier": {"system": "urn:ietf:rfc:3986",
                       "value": "urn:uuid:8f6d3f0e-4a7b-4c1e-9d1f-2b7b9d0c1a11"},
        "timestamp": "2025-01-01T10:00:00Z",
        "entry": [
            {"fullUrl": "https://a.jgz.test/fhir/MessageHeader/h1",
             "resource": {"resourceType": "MessageHeader", "id": "h1",
                          "eventCoding": {"code": "dossier-transfer"},
                          "sender": {"identifier": {"system": URA_SYSTEM, "value": SENDER}},
                          "destination": [{"endpoint": "https://b.jgz.test/fhir",
                                           "receiver": {"identifier": {
                                               "system": URA_SYSTEM, "value": recipient}}}]}},
            {"fullUrl": "https://a.jgz.test/fhir/Patient/p1",
             "resource": {"resourceType": "Patient", "id": "p1",
                          "meta": {"tag": [{"system": "urn:test", "code": "jgz"}]},
                          "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn",
                                          "value": "999911120"}],
                          "name": [{"family": "Jansen", "given": ["Émile"]}],
                          "birthDate": "2021-03-04"}},
            {"fullUrl": "https://a.jgz.test/fhir/Observation/o1",
             "resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org",
                                               "code": "29463-7"}]},
                          "subject": {"reference": "Patient/p1"},
                          "valueQuantity": {"value": 15.25, "unit": "kg"}}},
        ],
    }


# --- hand-made JOSE (cryptography + base64 only) ----------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def der_chain(creds: Credentials) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in creds.chain]


def now_instant() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Signer = Callable[[bytes], bytes]


def es256(key: ec.EllipticCurvePrivateKey) -> Signer:
    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return sign


def ps256(key: rsa.RSAPrivateKey) -> Signer:
    return lambda data: key.sign(data, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                 hashes.SHA256())


def real_signer(creds: Credentials) -> Signer:
    key = creds.key
    return es256(key) if isinstance(key, ec.EllipticCurvePrivateKey) else ps256(key)


def forge_jws(header: dict[str, Any], payload: bytes, sign: Signer, *,
              detached: bool = True) -> str:
    protected = b64url(json.dumps(header).encode())
    body = b64url(payload)
    signature = b64url(sign(f"{protected}.{body}".encode()))
    return f"{protected}..{signature}" if detached else f"{protected}.{body}.{signature}"


def with_token(bundle: dict[str, Any], token: str, ura: str = SENDER) -> dict[str, Any]:
    signed = copy.deepcopy(bundle)
    signed["signature"] = {
        "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
        "who": {"identifier": {"system": URA_SYSTEM, "value": ura}},
        "sigFormat": "application/jose", "data": base64.b64encode(token.encode()).decode()}
    return signed


def sign_by_hand(creds: Credentials, bundle: dict[str, Any], *, sign: Signer | None = None,
                 **header: Any) -> dict[str, Any]:
    """`bundle` signed without joserfc; `header` overrides or adds header members (None
    removes one)."""
    alg = "ES256" if isinstance(creds.key, ec.EllipticCurvePrivateKey) else "PS256"
    full = {"alg": alg, "x5c": der_chain(creds), "sigT": now_instant(), **header}
    full = {k: v for k, v in full.items() if v is not None}
    token = forge_jws(full, seal.canonical(bundle), sign or real_signer(creds))
    return with_token(bundle, token, creds.ura)


def oaep(public_key: rsa.RSAPublicKey) -> Callable[[bytes], bytes]:
    return lambda cek: public_key.encrypt(cek, padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                            hashes.SHA256(), None))


def forge_jwe(header: dict[str, Any], plaintext: bytes,
              wrap: Callable[[bytes], bytes]) -> str:
    cek, iv = os.urandom(32), os.urandom(12)
    protected = b64url(json.dumps(header).encode())
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return ".".join([protected, b64url(wrap(cek)), b64url(iv), b64url(sealed[:-16]),
                     b64url(sealed[-16:])])


def thumbprint(cert: x509.Certificate) -> str:
    return b64url(cert.fingerprint(hashes.SHA256()))


def code_of(call: Callable[[], object]) -> str:
    with pytest.raises(SealError) as caught:
        call()
    return caught.value.code


# --- round trip -------------------------------------------------------------------------------

def test_sign_encrypt_decrypt_verify_round_trip(world: World) -> None:
    bundle = dossier()
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    signed = seal.sign_bundle(bundle, world.sender, when=when)
    assert "signature" not in bundle  # a copy was signed
    token = seal.encrypt(json.dumps(signed).encode(), world.recipient.certificate)
    opened = json.loads(seal.decrypt(token, world.recipient))
    verified = seal.verify_bundle(opened, world.trust)
    assert verified == seal.Verified(ura=SENDER, certificate=world.sender.certificate,
                                     signed_at=when)
    assert opened == signed


def test_signature_element_and_header(world: World) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    signature = seal.sign_bundle(dossier(), world.sender, when=when)["signature"]
    assert signature["type"] == [{"system": "urn:iso-astm:E1762-95:2013",
                                  "code": "1.2.840.10065.1.12.1.1",
                                  "display": "Author's Signature"}]
    assert signature["when"] == "2025-01-02T03:04:05Z"
    assert signature["who"] == {"identifier": {"system": URA_SYSTEM, "value": SENDER}}
    assert signature["sigFormat"] == "application/jose"
    protected, payload, sig = base64.b64decode(signature["data"]).decode().split(".")
    assert payload == "" and sig  # detached
    header = json.loads(unb64url(protected))
    assert set(header) == {"alg", "x5c", "sigT"}
    assert header["alg"] == {"ec": "ES256", "rsa": "PS256"}[world.key_type]
    assert header["sigT"] == "2025-01-02T03:04:05Z"
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
    assert chain == [world.sender.certificate, world.pki.intermediate]  # leaf first, no root


def test_jwe_header(world: World) -> None:
    token = seal.encrypt(b"{}", world.recipient.certificate)
    header = json.loads(unb64url(token.split(".")[0]))
    expected = {"ec": "ECDH-ES+A256KW", "rsa": "RSA-OAEP-256"}[world.key_type]
    assert (header["alg"], header["enc"]) == (expected, "A256GCM")
    assert header["x5t#S256"] == thumbprint(world.recipient.certificate)
    assert "zip" not in header
    assert set(header) <= {"alg", "enc", "x5t#S256", "epk"}


def test_receipt_round_trip(world: World) -> None:
    claims = {"transferId": "t-1", "status": "stored", "payloadSha256": "ab" * 32}
    token = seal.sign_receipt(claims, world.recipient)
    header = json.loads(unb64url(token.split(".")[0]))
    assert header["typ"] == "ekd-receipt" and "x5c" in header
    assert seal.verify_receipt(token, world.trust) == (claims, RECIPIENT)


# --- canonical form ---------------------------------------------------------------------------

def test_canonical_excludes_id_meta_signature_and_is_rfc8785() -> None:
    bundle = {"resourceType": "Bundle", "id": "x", "meta": {"versionId": "3"},
              "signature": {"data": "AA=="}, "b": 1.0, "a": ["é", 1e21, {"z": 1, "y": None}]}
    assert seal.canonical(bundle) == (
        '{"a":["é",1e+21,{"y":null,"z":1}],"b":1,"resourceType":"Bundle"}'.encode())
    assert bundle["id"] == "x" and "signature" in bundle  # not mutated


def test_key_order_and_whitespace_do_not_matter(world: World) -> None:
    signed = seal.sign_bundle(dossier(), world.sender)

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reversed_keys(v) for v in value]
        return value

    text = json.dumps(reversed_keys(signed), indent=3, ensure_ascii=True)
    assert text != json.dumps(signed)
    assert seal.verify_bundle(json.loads(text), world.trust).ura == SENDER


def test_bundle_id_and_meta_are_outside_the_signature(world: World) -> None:
    signed = seal.sign_bundle(dossier(), world.sender)
    stored = copy.deepcopy(signed)
    stored["id"] = "assigned-by-the-receiver"
    stored["meta"] = {"versionId": "7", "lastUpdated": "2030-01-01T00:00:00Z",
                      "tag": [{"code": "received"}]}
    assert seal.verify_bundle(stored, world.trust).ura == SENDER
    del stored["meta"], stored["id"]
    assert seal.verify_bundle(stored, world.trust).ura == SENDER


# --- altered content --------------------------------------------------------------------------

def _alter_value(b: dict[str, Any]) -> None:
    b["entry"][2]["resource"]["valueQuantity"]["value"] = 15.26


def _readdress(b: dict[str, Any]) -> None:
    b["entry"][0]["resource"]["destination"][0]["receiver"]["identifier"]["value"] = OTHER


def _retag_entry(b: dict[str, Any]) -> None:
    b["entry"][1]["resource"]["meta"]["tag"][0]["code"] = "other"


def _add_entry(b: dict[str, Any]) -> None:
    b["entry"].append({"resource": {"resourceType": "Condition", "id": "c1"}})


def _redate(b: dict[str, Any]) -> None:
    b["timestamp"] = "2025-02-01T10:00:00Z"


@pytest.mark.parametrize("alter", [_alter_value, _readdress, _retag_entry, _add_entry, _redate],
                         ids=["payload-value", "envelope-recipient", "entry-meta-tag",
                              "extra-entry", "envelope-timestamp"])
def test_altered_content_breaks_the_signature(world: World,
                                              alter: Callable[[dict[str, Any]], None]) -> None:
    signed = seal.sign_bundle(dossier(), world.sender)
    assert seal.verify_bundle(copy.deepcopy(signed), world.trust).ura == SENDER
    alter(signed)
    assert code_of(lambda: seal.verify_bundle(signed, world.trust)) == "signature"


def test_signature_claims_outside_the_signed_bytes_must_match(world: World) -> None:
    """`who` and `when` are not signed: a changed `who` must not name someone else."""
    signed = seal.sign_bundle(dossier(), world.sender)
    spoofed = copy.deepcopy(signed)
    spoofed["signature"]["who"]["identifier"]["value"] = OTHER
    assert code_of(lambda: seal.verify_bundle(spoofed, world.trust)) == "signature"
    redated = copy.deepcopy(signed)
    redated["signature"]["when"] = "2020-01-01T00:00:00Z"
    assert code_of(lambda: seal.verify_bundle(redated, world.trust)) == "signature"


def test_signed_by_someone_else_names_them(world: World) -> None:
    """Sender spoofing is decided by later layers; this one must report the real signer."""
    forged = seal.sign_bundle(dossier(), world.other)  # envelope still says SENDER
    assert seal.verify_bundle(forged, world.trust).ura == OTHER


@pytest.mark.parametrize(("mangle", "code"), [
    (lambda s: s.pop("signature"), "signature"),
    (lambda s: s["signature"].update(sigFormat="application/pkcs7-signature"), "malformed"),
    (lambda s: s["signature"].update(data="!!not base64!!"), "malformed"),
    (lambda s: s["signature"].update(data=base64.b64encode(b"a.b.c").decode()), "malformed"),
    (lambda s: s["signature"].update(data="QQ==" * 40_000), "size"),
    (lambda s: s.update(resourceType="Parameters"), "malformed"),
], ids=["unsigned", "sigformat", "not-base64", "attached-payload", "huge", "not-a-bundle"])
def test_malformed_signatures(world: World, mangle: Callable[[dict[str, Any]], Any],
                              code: str) -> None:
    signed = seal.sign_bundle(dossier(), world.sender)
    mangle(signed)
    assert code_of(lambda: seal.verify_bundle(signed, world.trust)) == code


# --- JWE tampering and the wrong recipient ----------------------------------------------------

def _flip(segment: str) -> str:
    raw = bytearray(unb64url(segment))
    raw[len(raw) // 2] ^= 0x01
    return b64url(bytes(raw))


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4],
                         ids=["protected-header", "encrypted-key", "iv", "ciphertext", "tag"])
def test_tampered_jwe_does_not_decrypt(world: World, index: int) -> None:
    token = seal.encrypt(b'{"resourceType": "Bundle"}', world.recipient.certificate)
    assert seal.decrypt(token, world.recipient) == b'{"resourceType": "Bundle"}'
    parts = token.split(".")
    if index == 0:  # a header that still passes the allow-lists, but is not what was sealed
        header = json.loads(unb64url(parts[0]))
        header["kid"] = "added"
        parts[0] = b64url(json.dumps(header).encode())
    else:
        parts[index] = _flip(parts[index])
    assert code_of(lambda: seal.decrypt(".".join(parts), world.recipient)) == "decrypt"


def test_truncated_tag_and_iv_are_refused(world: World) -> None:
    parts = seal.encrypt(b"x" * 100, world.recipient.certificate).split(".")
    for index in (2, 4):
        short = list(parts)
        short[index] = b64url(unb64url(parts[index])[:8])
        assert code_of(lambda s=short: seal.decrypt(".".join(s), world.recipient)) == "decrypt"


def test_package_for_b_cannot_be_opened_by_c(world: World) -> None:
    token = seal.encrypt(b"dossier", world.recipient.certificate)
    assert code_of(lambda: seal.decrypt(token, world.other)) == "recipient"
    # without the thumbprint the key itself still refuses
    public = world.recipient.certificate.public_key()
    alg = "ECDH-ES+A256KW" if world.key_type == "ec" else "RSA-OAEP-256"
    key = (ECKey.import_key(public) if isinstance(public, ec.EllipticCurvePublicKey)
           else RSAKey.import_key(public))  # type: ignore[arg-type]
    bare = jwe.encrypt_compact({"alg": alg, "enc": "A256GCM"}, b"dossier", key,
                               algorithms=[alg, "A256GCM"])
    assert seal.decrypt(bare, world.recipient) == b"dossier"
    assert code_of(lambda: seal.decrypt(bare, world.other)) == "decrypt"


def test_package_for_another_key_type_is_refused(tmp_path: Path, world: World) -> None:
    other_type = "rsa" if world.key_type == "ec" else "ec"
    pki = init(tmp_path / "mixed")
    issued = pki.issue(OTHER, "Other", key_type=other_type)  # type: ignore[arg-type]
    mismatched = Credentials.load(issued.cert_path, issued.key_path, issued.chain_path)
    token = seal.encrypt(b"dossier", world.recipient.certificate)
    assert code_of(lambda: seal.decrypt(token, mismatched)) == "algorithm"


# --- certificates -----------------------------------------------------------------------------

def test_expired_certificate_is_rejected(fresh: World) -> None:
    issued = fresh.pki.issue("90000009", "Kort", days=1)
    short = Credentials.load(issued.cert_path, issued.key_path, issued.chain_path)
    signed = seal.sign_bundle(dossier(), short)
    assert seal.verify_bundle(signed, fresh.trust).ura == "90000009"
    later = datetime.now(UTC) + timedelta(days=2)  # the CRL (7 days) is still current then
    assert code_of(lambda: seal.verify_bundle(signed, fresh.trust, now=later)) == "certificate"


def test_signing_time_before_the_certificate_is_rejected(fresh: World) -> None:
    before = fresh.sender.certificate.not_valid_before_utc - timedelta(hours=1)
    signed = seal.sign_bundle(dossier(), fresh.sender, when=before)
    assert code_of(lambda: seal.verify_bundle(signed, fresh.trust)) == "certificate"
    in_time = seal.sign_bundle(dossier(), fresh.sender,
                               when=fresh.sender.certificate.not_valid_before_utc)
    assert seal.verify_bundle(in_time, fresh.trust).ura == SENDER


def test_signing_time_in_the_future_is_rejected(fresh: World) -> None:
    ahead = seal.sign_bundle(dossier(), fresh.sender,
                             when=datetime.now(UTC) + timedelta(minutes=10))
    assert code_of(lambda: seal.verify_bundle(ahead, fresh.trust)) == "header"
    slightly = seal.sign_bundle(dossier(), fresh.sender,
                                when=datetime.now(UTC) + timedelta(minutes=2))
    assert seal.verify_bundle(slightly, fresh.trust).ura == SENDER  # clock skew tolerated


def test_revocation_takes_effect_without_restart(fresh: World) -> None:
    signed = seal.sign_bundle(dossier(), fresh.sender)
    receipt = seal.sign_receipt({"status": "stored"}, fresh.sender)
    assert seal.verify_bundle(signed, fresh.trust).ura == SENDER
    fresh.pki.revoke(SENDER)  # same Trust instance: it must re-read the CRL
    with pytest.raises(SealError, match="revoked") as caught:
        seal.verify_bundle(signed, fresh.trust)
    assert caught.value.code == "certificate"
    assert code_of(lambda: seal.verify_receipt(receipt, fresh.trust)) == "certificate"
    other = seal.sign_bundle(dossier(), fresh.other)
    assert seal.verify_bundle(other, fresh.trust).ura == OTHER


def test_untrusted_pki_is_rejected(fresh: World, tmp_path: Path) -> None:
    impostor_pki = init(tmp_path / "impostor")
    issued = impostor_pki.issue(SENDER, "Consultatiebureau Oost")  # same URA, other CA
    impostor = Credentials.load(issued.cert_path, issued.key_path, issued.chain_path)
    signed = seal.sign_bundle(dossier(), impostor)
    assert code_of(lambda: seal.verify_bundle(signed, fresh.trust)) == "certificate"
    receipt = seal.sign_receipt({"status": "stored"}, impostor)
    assert code_of(lambda: seal.verify_receipt(receipt, fresh.trust)) == "certificate"


def test_missing_or_expired_crl_fails_closed(fresh: World) -> None:
    signed = seal.sign_bundle(dossier(), fresh.sender)
    fresh.pki.crl(now=datetime.now(UTC) - timedelta(days=8))
    with pytest.raises(SealError, match="expired") as caught:
        seal.verify_bundle(signed, fresh.trust)
    assert caught.value.code == "certificate"
    fresh.pki.crl()
    assert seal.verify_bundle(signed, fresh.trust).ura == SENDER
    fresh.pki.crl_path.unlink()
    with pytest.raises(SealError, match="No CRL") as caught:
        seal.verify_bundle(signed, fresh.trust)
    assert caught.value.code == "certificate"


def test_signer_chain_without_intermediate_is_rejected(world: World) -> None:
    alone = Credentials(ura=SENDER, key=world.sender.key, chain=[world.sender.certificate])
    signed = seal.sign_bundle(dossier(), alone)
    assert code_of(lambda: seal.verify_bundle(signed, world.trust)) == "certificate"


# --- algorithm downgrade (hand-crafted tokens) ------------------------------------------------

def test_a_hand_crafted_token_by_the_rules_is_accepted(world: World) -> None:
    """Proof that the forging helpers are right, so the rejections below are the checks'."""
    bundle = dossier()
    assert seal.verify_bundle(sign_by_hand(world.sender, bundle), world.trust).ura == SENDER
    token = forge_jws({"alg": "ES256" if world.key_type == "ec" else "PS256",
                       "x5c": der_chain(world.recipient), "typ": "ekd-receipt"},
                      b'{"status":"stored"}', real_signer(world.recipient), detached=False)
    assert seal.verify_receipt(token, world.trust) == ({"status": "stored"}, RECIPIENT)


def _public_pem(creds: Credentials) -> bytes:
    return creds.certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_alg_none_is_rejected(world: World) -> None:
    forged = sign_by_hand(world.sender, dossier(), alg="none", sign=lambda _: b"")
    with pytest.raises(SealError, match="'none' is not accepted") as caught:
        seal.verify_bundle(forged, world.trust)
    assert caught.value.code == "algorithm"


def test_hs256_keyed_with_the_public_key_is_rejected(world: World) -> None:
    pem = _public_pem(world.sender)
    forged = sign_by_hand(world.sender, dossier(), alg="HS256",
                          sign=lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    with pytest.raises(SealError, match="'HS256' is not accepted") as caught:
        seal.verify_bundle(forged, world.trust)
    assert caught.value.code == "algorithm"
    token = forge_jws({"alg": "HS256", "x5c": der_chain(world.recipient), "typ": "ekd-receipt"},
                      b'{"status":"stored"}',
                      lambda data: hmac.new(_public_pem(world.recipient), data,
                                            hashlib.sha256).digest(), detached=False)
    assert code_of(lambda: seal.verify_receipt(token, world.trust)) == "algorithm"


def test_rs256_is_rejected(rsa_world: World) -> None:
    key = rsa_world.sender.key
    assert isinstance(key, rsa.RSAPrivateKey)
    forged = sign_by_hand(rsa_world.sender, dossier(), alg="RS256",
                          sign=lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    with pytest.raises(SealError, match="'RS256' is not accepted") as caught:
        seal.verify_bundle(forged, rsa_world.trust)
    assert caught.value.code == "algorithm"


def test_alg_must_fit_the_key(world: World) -> None:
    wrong = "PS256" if world.key_type == "ec" else "ES256"
    forged = sign_by_hand(world.sender, dossier(), alg=wrong)
    assert code_of(lambda: seal.verify_bundle(forged, world.trust)) == "algorithm"


# --- header injection -------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"jku": "https://evil.test/jwks.json"},
    {"x5u": "https://evil.test/chain.pem"},
    {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
    {"crit": ["sigT"]},
    {"b64": False, "crit": ["b64"]},
    {"x5t": "AAAA"},
    {"srCms": []},
], ids=["jku", "x5u", "jwk", "crit", "b64", "x5t", "unknown"])
def test_header_injection_is_rejected(world: World, extra: dict[str, Any]) -> None:
    forged = sign_by_hand(world.sender, dossier(), **extra)  # validly signed by the sender
    assert code_of(lambda: seal.verify_bundle(forged, world.trust)) == "header"
    token = forge_jws({"alg": "ES256" if world.key_type == "ec" else "PS256",
                       "x5c": der_chain(world.recipient), "typ": "ekd-receipt", **extra},
                      b'{"status":"stored"}', real_signer(world.recipient), detached=False)
    assert code_of(lambda: seal.verify_receipt(token, world.trust)) == "header"


def test_duplicate_header_members_are_rejected(world: World) -> None:
    bundle = dossier()
    alg = "ES256" if world.key_type == "ec" else "PS256"
    protected = ('{"alg":"' + alg + '","alg":"none","x5c":' + json.dumps(der_chain(world.sender))
                 + ',"sigT":"' + now_instant() + '"}').encode()
    signing_input = f"{b64url(protected)}.{b64url(seal.canonical(bundle))}".encode()
    token = f"{b64url(protected)}..{b64url(real_signer(world.sender)(signing_input))}"
    forged = with_token(bundle, token)
    assert code_of(lambda: seal.verify_bundle(forged, world.trust)) == "header"


def test_missing_sigt_and_x5c_are_rejected(world: World) -> None:
    no_time = sign_by_hand(world.sender, dossier(), sigT=None)
    assert code_of(lambda: seal.verify_bundle(no_time, world.trust)) == "header"
    no_chain = sign_by_hand(world.sender, dossier(), x5c=None, kid="sender-key")
    assert code_of(lambda: seal.verify_bundle(no_chain, world.trust)) == "header"


def test_receipt_tampering_and_type(world: World) -> None:
    token = seal.sign_receipt({"status": "stored"}, world.recipient)
    header, _, signature = token.split(".")
    altered = ".".join([header, b64url(b'{"status":"imported"}'), signature])
    assert code_of(lambda: seal.verify_receipt(altered, world.trust)) == "signature"
    untyped = forge_jws({"alg": "ES256" if world.key_type == "ec" else "PS256",
                         "x5c": der_chain(world.recipient)},
                        b'{"status":"stored"}', real_signer(world.recipient), detached=False)
    assert code_of(lambda: seal.verify_receipt(untyped, world.trust)) == "header"
    bundle_signature = seal.sign_bundle(dossier(), world.recipient)["signature"]["data"]
    detached = base64.b64decode(bundle_signature).decode()
    assert code_of(lambda: seal.verify_receipt(detached, world.trust)) == "malformed"


# --- JWE downgrade and header injection (hand-crafted for an RSA recipient) -------------------

def _rsa_jwe(world: World, **header: Any) -> tuple[str, Credentials]:
    """A JWE for the RSA recipient, by the rules unless `header` says otherwise (`_wrap`
    replaces RSA-OAEP-256 key wrapping)."""
    public = world.recipient.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    wrap = header.pop("_wrap", None) or oaep(public)
    full = {"alg": "RSA-OAEP-256", "enc": "A256GCM",
            "x5t#S256": thumbprint(world.recipient.certificate), **header}
    plaintext = zlib.compress(b"dossier")[2:-4] if "zip" in full else b"dossier"
    return forge_jwe(full, plaintext, wrap), world.recipient


def test_a_hand_crafted_jwe_by_the_rules_decrypts(rsa_world: World) -> None:
    token, creds = _rsa_jwe(rsa_world)
    assert seal.decrypt(token, creds) == b"dossier"


def test_rsa1_5_is_rejected(rsa_world: World) -> None:
    public = rsa_world.recipient.certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    token, creds = _rsa_jwe(rsa_world, alg="RSA1_5",
                            _wrap=lambda cek: public.encrypt(cek, padding.PKCS1v15()))
    with pytest.raises(SealError, match="'RSA1_5' is not accepted") as caught:
        seal.decrypt(token, creds)
    assert caught.value.code == "algorithm"


@pytest.mark.parametrize("header", [
    {"alg": "dir", "_wrap": lambda cek: b""},
    {"alg": "RSA-OAEP"},
    {"alg": "HS256"},
    {"alg": "none"},
    {"enc": "A128CBC-HS256"},
    {"enc": "A128GCM"},
], ids=["dir", "rsa-oaep-sha1", "hs256", "none", "cbc-hs", "a128gcm"])
def test_other_jwe_algorithms_are_rejected(rsa_world: World, header: dict[str, Any]) -> None:
    token, creds = _rsa_jwe(rsa_world, **header)
    with pytest.raises(SealError, match="is not accepted") as caught:
        seal.decrypt(token, creds)
    assert caught.value.code == "algorithm"


@pytest.mark.parametrize("extra", [
    {"zip": "DEF"},
    {"jku": "https://evil.test/jwks.json"},
    {"x5u": "https://evil.test/chain.pem"},
    {"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
    {"crit": ["exp"], "exp": 1},
    {"epk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
    {"p2s": "AAAA", "p2c": 1000000},
], ids=["zip", "jku", "x5u", "jwk", "crit", "epk-with-rsa", "pbes2-params"])
def test_jwe_header_injection_is_rejected(rsa_world: World, extra: dict[str, Any]) -> None:
    token, creds = _rsa_jwe(rsa_world, **extra)
    assert code_of(lambda: seal.decrypt(token, creds)) == "header"


def test_jwe_for_another_certificate_thumbprint(rsa_world: World) -> None:
    token, creds = _rsa_jwe(rsa_world, **{"x5t#S256": thumbprint(rsa_world.other.certificate)})
    assert code_of(lambda: seal.decrypt(token, creds)) == "recipient"


# --- size -------------------------------------------------------------------------------------

def test_oversized_token_is_rejected_before_parsing(world: World) -> None:
    garbage = "!" * (1024 + 1)  # not even base64: only a size check can name it
    assert code_of(lambda: seal.decrypt(garbage, world.recipient, max_bytes=1024)) == "size"
    assert code_of(lambda: seal.decrypt(garbage, world.recipient)) == "malformed"
    huge = b"!" * (64 * 1024 * 1024 + 1)  # the default limit
    assert code_of(lambda: seal.decrypt(huge, world.recipient)) == "size"


def test_real_packages_up_to_the_limit(world: World) -> None:
    """joserfc's own limits (64 kB ciphertext, 512-byte JWS header, 128 kB payload) would
    refuse a real dossier; ours follow `max_bytes`."""
    bundle = dossier()
    bundle["entry"] += [{"resource": {"resourceType": "Observation", "id": f"o{i}",
                                      "note": [{"text": "x" * 1000}]}} for i in range(1500)]
    signed = seal.sign_bundle(bundle, world.sender)
    plaintext = json.dumps(signed).encode()
    assert len(plaintext) > 1_500_000
    token = seal.encrypt(plaintext, world.recipient.certificate)
    opened = seal.decrypt(token, world.recipient, max_bytes=len(token))
    assert seal.verify_bundle(json.loads(opened), world.trust).ura == SENDER
    assert code_of(lambda: seal.decrypt(token, world.recipient,
                                        max_bytes=len(token) - 1)) == "size"


# --- trust ------------------------------------------------------------------------------------

def test_certificate_rejected_is_shared_with_the_pki_module() -> None:
    assert pki_module.CertificateRejected is CertificateRejected


def test_credentials_load_drops_the_root_and_checks_the_key(world: World) -> None:
    assert world.sender.ura == SENDER
    assert world.sender.chain == [world.sender.certificate, world.pki.intermediate]
    with pytest.raises(ValueError, match="does not belong"):
        Credentials(ura=SENDER, key=world.other.key, chain=world.sender.chain)


def test_trust_checks_key_usage(fresh: World) -> None:
    chain = [fresh.sender.certificate, fresh.pki.intermediate]
    for usage in ("tls", "sign", "encrypt"):
        assert fresh.trust.verify(chain, usage=usage) == SENDER  # type: ignore[arg-type]
    # a TLS-only certificate (no keyAgreement / keyEncipherment) must not receive packages,
    # one without digitalSignature must not sign
    key = ec.generate_private_key(ec.SECP256R1())

    def variant(**usage: bool) -> x509.Certificate:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                     crl_sign=False, encipher_only=False, decipher_only=False) | usage
        template = fresh.sender.certificate
        builder = (x509.CertificateBuilder().subject_name(template.subject)
                   .issuer_name(template.issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(template.not_valid_before_utc)
                   .not_valid_after(template.not_valid_after_utc)
                   .add_extension(x509.KeyUsage(**flags), critical=True))
        for ext in template.extensions:
            if not isinstance(ext.value, x509.KeyUsage | x509.SubjectKeyIdentifier):
                builder = builder.add_extension(ext.value, ext.critical)
        return builder.sign(fresh.pki._intermediate_key, hashes.SHA256())

    tls_only = variant(digital_signature=True)
    assert fresh.trust.verify([tls_only, fresh.pki.intermediate], usage="sign") == SENDER
    with pytest.raises(CertificateRejected, match="keyAgreement"):
        fresh.trust.verify([tls_only, fresh.pki.intermediate], usage="encrypt")
    no_signing = variant(key_agreement=True)
    with pytest.raises(CertificateRejected, match="digitalSignature"):
        fresh.trust.verify([no_signing, fresh.pki.intermediate], usage="sign")


def test_a_crl_published_after_the_signing_time_still_answers_for_it(fresh: World) -> None:
    """CRLs are re-issued routinely; a package signed before the latest CRL must still
    verify (the certificate is not listed), not fail as 'CRL not yet valid'."""
    signed_at = datetime.now(UTC) - timedelta(minutes=3)
    signed = seal.sign_bundle(dossier(), fresh.sender, when=signed_at)
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(fresh.pki.intermediate.subject)
           .last_update(now - timedelta(minutes=1)).next_update(now + timedelta(days=7))
           .sign(fresh.pki._intermediate_key, hashes.SHA256()))
    fresh.pki.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    assert seal.verify_bundle(signed, fresh.trust).signed_at == signed_at.replace(microsecond=0)


def test_a_crl_that_is_stale_now_rejects_even_for_a_past_moment(fresh: World) -> None:
    """Revocation status is a question about the present: a CRL past its nextUpdate says
    nothing about revocations since, whatever moment the chain is checked for."""
    chain = [fresh.sender.certificate, fresh.pki.intermediate]
    now = datetime.now(UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(fresh.pki.intermediate.subject)
           .last_update(now - timedelta(days=7)).next_update(now - timedelta(minutes=1))
           .sign(fresh.pki._intermediate_key, hashes.SHA256()))
    fresh.pki.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRejected, match="expired"):
        fresh.trust.verify(chain, at=now - timedelta(minutes=3))
