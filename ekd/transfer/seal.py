"""Sealing a dossier for transfer: sign (detached JWS in `Bundle.signature`), encrypt (JWE for
the recipient's certificate key), and signed receipts. Pure functions: no database, no web.

Why hand-written checks in front of joserfc: a package arrives from another organisation, so
every header is attacker-controlled. The classic JOSE attacks (`alg: none`, HS256 keyed with a
public key, RSA1_5 padding oracles, keys fetched from `jku`/`x5u` or trusted from an embedded
`jwk`, `crit`/`b64` tricks, `zip` bombs) are all decided by the header, so the header is parsed
and checked against explicit allow-lists here *before* any library sees the token; joserfc then
only does the cryptography, with its own registry narrowed to the same algorithms as a second
line. Keys come only from the `x5c` chain (verified against `Trust`) or from our own
credentials, never from the token.

Every `SealError` message is safe to return to the peer: it names what was refused, never key
material or payload content. See `../../shared/jgz/TRANSFER.md` for the scheme.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe, jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.registry import HeaderParameter

from ekd.exchange.trust import CertificateRejected, Credentials, Trust
from ekd.fhir.naming_systems import URA as URA_SYSTEM

ErrorCode = Literal["malformed", "algorithm", "header", "signature", "certificate", "decrypt",
                    "size", "recipient"]

#: The FHIR Signature of the author of the package (ASTM E1762 signature type).
SIGNATURE_TYPE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1",
                  "display": "Author's Signature"}
SIG_FORMAT = "application/jose"
RECEIPT_TYPE = "ekd-receipt"
#: Top-level Bundle elements outside the signed content: `id` and `meta` change when a server
#: stores the Bundle, and the signature cannot sign itself.
UNSIGNED_ELEMENTS = frozenset({"id", "meta", "signature"})

SIGNING_ALGORITHMS = frozenset({"ES256", "PS256"})
KEY_ALGORITHMS = frozenset({"RSA-OAEP-256", "ECDH-ES+A256KW"})
CONTENT_ENCRYPTION = "A256GCM"
JWS_HEADERS = frozenset({"alg", "x5c", "sigT", "typ", "kid"})
JWE_HEADERS = frozenset({"alg", "enc", "epk", "x5t#S256", "kid", "typ", "cty"})
#: Header names that make a library fetch or trust a key, or change how a token is processed:
#: reported as such, not just as "unknown".
DANGEROUS_HEADERS = frozenset({"jku", "x5u", "jwk", "crit", "b64", "zip"})

#: A clock ahead by this much is tolerated in `sigT`.
CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: Limits for the parts that never grow with the dossier.
MAX_HEADER_BYTES = 64 * 1024
MAX_SIGNATURE_DATA_BYTES = 128 * 1024
MAX_RECEIPT_BYTES = 1024 * 1024
MAX_CHAIN_LENGTH = 5

_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_GCM_IV_BYTES, _GCM_TAG_BYTES = 12, 16


class SealError(Exception):
    """A package, signature or receipt is refused. `code` is one of `ErrorCode`; the message
    may be shown to the peer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code


@dataclass(frozen=True, slots=True)
class Verified:
    """Who signed, as proven by a trusted certificate (never as the Bundle claims)."""

    ura: str
    certificate: x509.Certificate
    signed_at: datetime


# --- joserfc registries -----------------------------------------------------------------------

_SIGT = {"sigT": HeaderParameter("Claimed signing time (JAdES)", "str")}


class _BundleJWSRegistry(jws.JWSRegistry):
    """joserfc caps headers at 512 bytes (an `x5c` chain is several kB) and payloads at
    128 kB (a dossier is MBs); the real size limit is `decrypt`'s `max_bytes`."""

    max_header_length = MAX_HEADER_BYTES
    max_payload_length = 1024 * 1024 * 1024
    max_signature_length = 4096


class _ReceiptJWSRegistry(jws.JWSRegistry):
    max_header_length = MAX_HEADER_BYTES
    max_payload_length = MAX_RECEIPT_BYTES
    max_signature_length = 4096


class _JWERegistry(jwe.JWERegistry):
    max_protected_header_length = 4096


_BUNDLE_JWS = _BundleJWSRegistry(header_registry=_SIGT, algorithms=sorted(SIGNING_ALGORITHMS))
_RECEIPT_JWS = _ReceiptJWSRegistry(header_registry=_SIGT, algorithms=sorted(SIGNING_ALGORITHMS))


def _jwe_registry(max_bytes: int) -> _JWERegistry:
    registry = _JWERegistry(algorithms=[*sorted(KEY_ALGORITHMS), CONTENT_ENCRYPTION])
    registry.max_ciphertext_length = max_bytes
    return registry


# --- small helpers ----------------------------------------------------------------------------

def _b64url_decode(segment: bytes, what: str) -> bytes:
    """Strict base64url (the stdlib silently skips foreign characters)."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise SealError("malformed", f"The {what} is not base64url")
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two `alg` members would be read differently by different parsers: refuse them."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SealError("header", f"Header member {key!r} appears twice")
        result[key] = value
    return result


def _decode_header(segment: bytes) -> dict[str, Any]:
    if len(segment) > MAX_HEADER_BYTES:
        raise SealError("size", "The protected header is too large")
    raw = _b64url_decode(segment, "protected header")
    try:
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise SealError("malformed", "The protected header is not JSON") from None
    if not isinstance(header, dict):
        raise SealError("malformed", "The protected header is not a JSON object")
    return header


def _check_names(header: dict[str, Any], allowed: frozenset[str]) -> None:
    names = set(header)
    dangerous = sorted(names & DANGEROUS_HEADERS)
    if dangerous:
        raise SealError("header", f"Header parameter(s) {', '.join(dangerous)} are not accepted")
    unknown = sorted(names - allowed)
    if unknown:
        raise SealError("header", f"Unknown header parameter(s): {', '.join(unknown)}")


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _instant(moment: datetime) -> str:
    """FHIR instant / JAdES sigT: UTC, whole seconds, `Z`."""
    return _utc(moment).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_instant(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise SealError("header", f"{what} is not a date-time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise SealError("header", f"{what} is not a date-time") from None
    if moment.tzinfo is None:
        raise SealError("header", f"{what} has no time zone")
    return moment.astimezone(UTC)


def _signing_alg(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SealError("algorithm", "Only P-256 EC keys can sign (ES256)")
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SealError("algorithm", "RSA keys below 2048 bits cannot sign")
        return "PS256"
    raise SealError("algorithm", "Only EC P-256 and RSA keys can sign")


def _key_algorithm(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ECDH-ES+A256KW"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SealError("algorithm", "RSA keys below 2048 bits cannot receive packages")
        return "RSA-OAEP-256"
    raise SealError("algorithm", "Only EC and RSA keys can receive packages")


def _jose_key(key: object) -> ECKey | RSAKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)  # type: ignore[arg-type]
    return RSAKey.import_key(key)  # type: ignore[arg-type]


def _x5c(creds: Credentials) -> list[str]:
    """RFC 7515 §4.1.6: standard (not url-safe) base64 of DER, leaf first."""
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
            for cert in creds.chain]


def _chain_from_header(header: dict[str, Any]) -> list[x509.Certificate]:
    x5c = header.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise SealError("header", "The signature carries no x5c certificate chain")
    if len(x5c) > MAX_CHAIN_LENGTH:
        raise SealError("header", "The x5c certificate chain is too long")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c]
    except (ValueError, binascii.Error):
        raise SealError("certificate", "The x5c certificate chain cannot be read") from None


def _check_signing_header(header: dict[str, Any]) -> list[x509.Certificate]:
    """Allow-lists for every JWS we accept; returns the chain whose leaf must have signed."""
    _check_names(header, JWS_HEADERS)
    alg = header.get("alg")
    if alg not in SIGNING_ALGORITHMS:
        raise SealError("algorithm", f"Signature algorithm {alg!r} is not accepted "
                                     f"(accepted: {', '.join(sorted(SIGNING_ALGORITHMS))})")
    for name in ("typ", "kid"):
        if name in header and not isinstance(header[name], str):
            raise SealError("header", f"Header parameter {name} must be a string")
    chain = _chain_from_header(header)
    if _signing_alg(chain[0].public_key()) != alg:
        raise SealError("algorithm", f"Signature algorithm {alg} does not fit the signer's key")
    return chain


def _verify_signer(chain: list[x509.Certificate], trust: Trust, *, signed_at: datetime | None,
                   now: datetime) -> str:
    """The chain must be trusted now (revocations since signing count: fail closed) and, when
    a signing time is claimed, also at that time."""
    try:
        ura = trust.verify(chain, at=now, usage="sign")
        if signed_at is not None:
            trust.verify(chain, at=signed_at, usage="sign")
    except CertificateRejected as exc:
        raise SealError("certificate", f"Signer certificate rejected: {exc}") from None
    return ura


def _check_signed_at(header: dict[str, Any], now: datetime, *, required: bool) -> datetime | None:
    if "sigT" not in header:
        if required:
            raise SealError("header", "The signature has no signing time (sigT)")
        return None
    signed_at = _parse_instant(header["sigT"], "sigT")
    if signed_at > now + CLOCK_SKEW:
        raise SealError("header", "The signing time (sigT) lies in the future")
    return signed_at


# --- signing ----------------------------------------------------------------------------------

#: JSON integers RFC 8785 (rfc8785) accepts: those a double holds exactly.
_MAX_SAFE_INT = 2**53 - 1


class _NotPlain(Exception):
    """The fast path cannot vouch for this value; `rfc8785` decides."""


def _jcs_ready(value: Any) -> Any:
    """`value` with every float replaced by its RFC 8785 bytes (an `orjson.Fragment`), for
    `jcs`: copied on write, so containers without floats are returned as they are. Raises
    `_NotPlain` for anything whose orjson output is not proven equal."""
    kind = type(value)
    if kind is dict:
        copied: dict[str, Any] | None = None
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or max(key) < "\ue000"):
                raise _NotPlain
            if type(item) is not str:
                ready = _jcs_ready(item)
                if ready is not item:
                    if copied is None:
                        copied = dict(value)
                    copied[key] = ready
        return value if copied is None else copied
    if kind is list:
        listed: list[Any] | None = None
        for index, item in enumerate(value):
            if type(item) is not str:
                ready = _jcs_ready(item)
                if ready is not item:
                    if listed is None:
                        listed = list(value)
                    listed[index] = ready
        return value if listed is None else listed
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            return value
        raise _NotPlain
    if kind is float:
        return orjson.Fragment(rfc8785.dumps(value))
    raise _NotPlain


def jcs(value: Any) -> bytes:
    """`rfc8785.dumps(value)`, byte for byte, ~10x faster for JSON-shaped data.

    orjson with `OPT_SORT_KEYS` writes the same bytes as RFC 8785 once floats are out of
    the way: `_jcs_ready` swaps each for a `Fragment` holding `rfc8785.dumps` of that float,
    which orjson copies verbatim (a number's form does not depend on where it stands). For
    the rest:

    - containers: no whitespace, `,` and `:` alone, `[]`/`{}` for empty ones; exact `dict`
      and `list` only (subclasses, tuples and other types go to rfc8785).
    - key order: RFC 8785 sorts by UTF-16 code units, orjson by code points. They differ
      only between a character above U+FFFF (a surrogate pair, D800-DBFF first) and one in
      U+E000-U+FFFF. A key holding any character from U+E000 up sends the whole value to
      rfc8785; every other key is below U+E000, where a character is one UTF-16 code unit
      equal to its code point, so both orders agree (lone surrogates: see strings).
    - strings: both escape only `"`, `\\` and U+0000-U+001F (`\\b \\t \\n \\f \\r`,
      else lowercase `\\u00xx`) and write everything else as UTF-8; character by character
      the same, checked for every Unicode scalar value in tests/test_canonical_json.py. A
      lone surrogate makes orjson raise, and rfc8785 decides (it refuses them too).
    - integers within +-(2**53 - 1), `true`, `false`, `null`: plain decimal / literals in
      both; larger integers go to rfc8785 (which refuses them).

    Whenever the fast path raises (types, keys, nesting beyond orjson's 254 levels, a
    non-finite float, surrogates), `rfc8785.dumps` runs on the original value, so errors
    and edge cases are exactly rfc8785's.
    """
    try:
        return orjson.dumps(_jcs_ready(value), option=orjson.OPT_SORT_KEYS)
    except (_NotPlain, orjson.JSONEncodeError, rfc8785.CanonicalizationError, RecursionError):
        return rfc8785.dumps(value)


def canonical(bundle: dict[str, Any]) -> bytes:
    """RFC 8785 bytes of the Bundle without `id`, `meta` and `signature`: what is signed.
    Both sides canonicalise the parsed JSON, so key order and whitespace never matter."""
    if not isinstance(bundle, dict):
        raise SealError("malformed", "A Bundle must be a JSON object")
    content = {key: value for key, value in bundle.items() if key not in UNSIGNED_ELEMENTS}
    try:
        return jcs(content)
    except (rfc8785.CanonicalizationError, RecursionError, TypeError, ValueError):
        raise SealError("malformed", "The Bundle cannot be canonicalised (RFC 8785)") from None


def sign_bundle(bundle: dict[str, Any], creds: Credentials, *,
                when: datetime | None = None) -> dict[str, Any]:
    """A copy of `bundle` with `Bundle.signature` set: a detached JWS over `canonical(bundle)`
    with the signer's chain in `x5c`, so the receiver needs nothing but its trusted roots."""
    moment = _instant(_utc(when))
    protected = {"alg": _signing_alg(creds.key), "x5c": _x5c(creds), "sigT": moment}
    token = jws.serialize_compact(protected, canonical(bundle), _jose_key(creds.key),
                                  registry=_BUNDLE_JWS)
    detached = jws.detach_content(token)
    signed = dict(bundle)
    signed["signature"] = {
        "type": [dict(SIGNATURE_TYPE)],
        "when": moment,
        "who": {"identifier": {"system": URA_SYSTEM, "value": creds.ura}},
        "sigFormat": SIG_FORMAT,
        "data": base64.b64encode(detached.encode("ascii")).decode("ascii"),
    }
    return signed


def verify_bundle(bundle: dict[str, Any], trust: Trust, *,
                  now: datetime | None = None) -> Verified:
    """Check `Bundle.signature` and return who signed it, as the certificate says.

    Order: structure and header allow-lists, then the signer's chain (at `sigT` and now), and
    only then the expensive canonicalisation and the signature itself.
    """
    moment = _utc(now)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise SealError("malformed", "Not a FHIR Bundle")
    signature = bundle.get("signature")
    if not isinstance(signature, dict):
        raise SealError("signature", "The Bundle is not signed")
    if signature.get("sigFormat") != SIG_FORMAT:
        raise SealError("malformed", f"Bundle.signature.sigFormat must be {SIG_FORMAT}")
    data = signature.get("data")
    if not isinstance(data, str) or not data:
        raise SealError("malformed", "Bundle.signature.data is missing")
    if len(data) > MAX_SIGNATURE_DATA_BYTES:
        raise SealError("size", "Bundle.signature.data is too large")
    try:
        token = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SealError("malformed", "Bundle.signature.data is not base64") from None
    parts = token.split(b".")
    if len(parts) != 3 or parts[1] != b"":
        raise SealError("malformed", "Bundle.signature.data is not a detached compact JWS")
    header = _decode_header(parts[0])
    chain = _check_signing_header(header)
    signed_at = _check_signed_at(header, moment, required=True)
    assert signed_at is not None
    ura = _verify_signer(chain, trust, signed_at=signed_at, now=moment)
    _check_signature_claims(signature, ura, signed_at)
    try:
        jws.deserialize_compact(token, _jose_key(chain[0].public_key()), payload=canonical(bundle),
                                registry=_BUNDLE_JWS)
    except (JoseError, ValueError, TypeError):
        raise SealError("signature", "The Bundle signature does not match its content") \
            from None
    return Verified(ura=ura, certificate=chain[0], signed_at=signed_at)


def _check_signature_claims(signature: dict[str, Any], ura: str, signed_at: datetime) -> None:
    """`who` and `when` sit outside the signed bytes; they must repeat what the certificate
    and `sigT` prove, or a reader of the stored Bundle would be misled."""
    who = signature.get("who")
    identifier = who.get("identifier") if isinstance(who, dict) else None
    if not isinstance(identifier, dict) or identifier.get("system") != URA_SYSTEM \
            or identifier.get("value") != ura:
        raise SealError("signature", "Bundle.signature.who does not name the signer's URA")
    if "when" in signature and _parse_instant(signature["when"], "Bundle.signature.when") \
            != signed_at:
        raise SealError("signature", "Bundle.signature.when differs from the signing time")


# --- encryption -------------------------------------------------------------------------------

def _thumbprint(cert: x509.Certificate) -> str:
    return _b64url(cert.fingerprint(hashes.SHA256()))


def encrypt(plaintext: bytes, recipient_cert: x509.Certificate) -> str:
    """A compact JWE that only the holder of `recipient_cert`'s key can open. The caller is
    responsible for having verified the certificate (`Trust.verify(..., usage="encrypt")`)."""
    public_key = recipient_cert.public_key()
    protected = {"alg": _key_algorithm(public_key), "enc": CONTENT_ENCRYPTION,
                 "x5t#S256": _thumbprint(recipient_cert)}
    return jwe.encrypt_compact(protected, plaintext, _jose_key(public_key),
                               registry=_jwe_registry(DEFAULT_MAX_BYTES))


def decrypt(token: str | bytes, creds: Credentials, *,
            max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Open a JWE addressed to `creds`. The size is checked before anything is parsed, the
    header before anything is decrypted."""
    if not isinstance(token, str | bytes):
        raise SealError("malformed", "A JWE is text")
    if len(token) > max_bytes:
        raise SealError("size", f"The package exceeds {max_bytes} bytes")
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise SealError("malformed", "A compact JWE is ASCII") from None
    parts = token.strip().split(b".")
    if len(parts) != 5:
        raise SealError("malformed", "Not a compact JWE")
    header = _decode_header(parts[0])
    _check_encryption_header(header, creds)
    iv, tag = _b64url_decode(parts[2], "IV"), _b64url_decode(parts[4], "tag")
    for segment in (parts[1], parts[3]):  # joserfc decodes these; the stdlib would skip junk
        if not _B64URL.fullmatch(segment):
            raise SealError("malformed", "The package is not base64url")
    if len(iv) != _GCM_IV_BYTES or len(tag) != _GCM_TAG_BYTES:
        raise SealError("decrypt", "The package cannot be decrypted")
    try:
        result = jwe.decrypt_compact(b".".join(parts), _jose_key(creds.key),
                                     registry=_jwe_registry(max_bytes))
    except (JoseError, ValueError, TypeError):
        # one message for every cause: no padding or key-unwrap oracle for the sender
        raise SealError("decrypt", "The package cannot be decrypted") from None
    assert result.plaintext is not None
    return result.plaintext


def _check_encryption_header(header: dict[str, Any], creds: Credentials) -> None:
    _check_names(header, JWE_HEADERS)
    alg, enc = header.get("alg"), header.get("enc")
    if alg not in KEY_ALGORITHMS:
        raise SealError("algorithm", f"Key management algorithm {alg!r} is not accepted "
                                     f"(accepted: {', '.join(sorted(KEY_ALGORITHMS))})")
    if enc != CONTENT_ENCRYPTION:
        raise SealError("algorithm", f"Content encryption {enc!r} is not accepted "
                                     f"(accepted: {CONTENT_ENCRYPTION})")
    if alg != _key_algorithm(creds.key):
        raise SealError("algorithm", f"Key management algorithm {alg} does not fit our key")
    if alg == "ECDH-ES+A256KW":
        epk = header.get("epk")
        curve = creds.key.curve.name  # type: ignore[union-attr]
        expected = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(curve)
        if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") != expected \
                or "d" in epk:
            raise SealError("header", "The ephemeral key (epk) is missing or not on our curve")
    elif "epk" in header:
        raise SealError("header", f"An ephemeral key (epk) does not belong with {alg}")
    for name in ("x5t#S256", "kid", "typ", "cty"):
        if name in header and not isinstance(header[name], str):
            raise SealError("header", f"Header parameter {name} must be a string")
    thumbprint = header.get("x5t#S256")
    if thumbprint is not None and thumbprint != _thumbprint(creds.certificate):
        raise SealError("recipient", "The package is addressed to another certificate")


# --- receipts ---------------------------------------------------------------------------------

def sign_receipt(claims: dict[str, Any], creds: Credentials) -> str:
    """A compact JWS over the receipt claims (RFC 8785 JSON) with the signer's chain, so the
    sender can prove later what the receiver acknowledged."""
    protected = {"alg": _signing_alg(creds.key), "x5c": _x5c(creds), "typ": RECEIPT_TYPE}
    try:
        payload = rfc8785.dumps(claims)
    except (rfc8785.CanonicalizationError, TypeError, ValueError):
        raise SealError("malformed", "The receipt claims are not JSON") from None
    return jws.serialize_compact(protected, payload, _jose_key(creds.key),
                                 registry=_RECEIPT_JWS)


def verify_receipt(token: str | bytes, trust: Trust, *,
                   now: datetime | None = None) -> tuple[dict[str, Any], str]:
    """The receipt's claims and the URA of its signer (from the trusted certificate)."""
    moment = _utc(now)
    if not isinstance(token, str | bytes):
        raise SealError("malformed", "A receipt is text")
    if len(token) > MAX_RECEIPT_BYTES:
        raise SealError("size", "The receipt is too large")
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise SealError("malformed", "A compact JWS is ASCII") from None
    parts = token.strip().split(b".")
    if len(parts) != 3 or not parts[1]:
        raise SealError("malformed", "Not a compact JWS")
    header = _decode_header(parts[0])
    chain = _check_signing_header(header)
    if header.get("typ") != RECEIPT_TYPE:
        raise SealError("header", f"A receipt has typ {RECEIPT_TYPE}")
    signed_at = _check_signed_at(header, moment, required=False)
    ura = _verify_signer(chain, trust, signed_at=signed_at, now=moment)
    try:
        obj = jws.deserialize_compact(b".".join(parts), _jose_key(chain[0].public_key()),
                                      registry=_RECEIPT_JWS)
    except (JoseError, ValueError, TypeError):
        raise SealError("signature", "The receipt signature is invalid") from None
    try:
        claims = json.loads(obj.payload)
    except (ValueError, RecursionError):
        raise SealError("malformed", "The receipt claims are not JSON") from None
    if not isinstance(claims, dict):
        raise SealError("malformed", "The receipt claims are not a JSON object")
    return claims, ura
