"""Whom an organisation is, and whom it trusts, in dossier transfer.

Why a module of its own: the test PKI (`ekd.exchange.pki`) holds CA private keys and exists to
*issue* certificates; a receiving organisation must only ever hold what it *trusts* — the root
certificate(s) and the published CRL — plus its own identity. Sealing (`ekd.transfer.seal`),
mutual TLS and the relay all check peers through `Trust.verify`, so there is one place where a
chain is accepted or refused.

Revocation is checked by hand because `cryptography.x509.verification` does none. It fails
closed: no CRL, an unreadable one, one from another issuer, a bad signature or a CRL that is no
longer current rejects the certificate — a receiver that cannot tell whether a certificate is
revoked must not trust it. The CRL file is re-read on every verification (the parsed and
signature-checked result is cached by its exact bytes), so a revocation published by the CA
takes effect without a restart.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ekd.security.certificates import InvalidOrganisationCertificate, ura_from_certificate

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Usage = Literal["tls", "sign", "encrypt"]

#: Tolerated clock difference between the CA that signed a CRL and this receiver.
CLOCK_SKEW = timedelta(minutes=5)

_CRL_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class CertificateRejected(ValueError):
    """A certificate (chain) must not be trusted. The message says why and never holds key
    material; a certificate is public, so the message may be shown to the peer."""


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _self_signed(cert: x509.Certificate) -> bool:
    """A root: sending it along is useless (the receiver must already have it) and would
    invite a receiver to trust what the sender says is a root."""
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Credentials:
    """An organisation's own identity: its URA, private key, and the chain it presents
    (leaf first, then intermediates; never the root)."""

    ura: str
    key: PrivateKey
    chain: list[x509.Certificate]

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError("Credentials need at least the organisation certificate")
        if self.key.public_key() != self.chain[0].public_key():
            raise ValueError("The private key does not belong to the organisation certificate")

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @classmethod
    def load(cls, cert_path: Path | str, key_path: Path | str,
             chain_path: Path | str | None = None) -> Credentials:
        """Read the organisation certificate, its key (PEM, unencrypted) and optionally the
        CA chain file (intermediates and root, as the PKI's `chain.pem`); self-signed roots
        are dropped from what will be sent. The URA comes from the certificate itself, so it
        can never disagree with what peers read from it."""
        leaf = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("The organisation key is neither an EC nor an RSA key")
        extra: list[x509.Certificate] = []
        if chain_path is not None:
            extra = [cert for cert in x509.load_pem_x509_certificates(
                Path(chain_path).read_bytes()) if not _self_signed(cert) and cert != leaf]
        ura = ura_from_certificate(leaf)
        if ura is None:
            raise ValueError("The organisation certificate names no organisation (no UZI URA)")
        return cls(ura=ura, key=key, chain=[leaf, *extra])


@dataclass(frozen=True, slots=True)
class _CachedCrls:
    data: bytes
    crls: tuple[x509.CertificateRevocationList, ...]


class Trust:
    """What a receiver trusts: the root certificate(s) and the CRL file (one or more PEM CRLs
    concatenated, one per issuing CA). No CA private keys."""

    def __init__(self, roots: list[x509.Certificate], crl_path: Path | str) -> None:
        if not roots:
            raise ValueError("Trust needs at least one root certificate")
        self.roots = list(roots)
        self.crl_path = Path(crl_path)
        self._store = Store(self.roots)
        self._cache: _CachedCrls | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, root_path: Path | str, crl_path: Path | str) -> Trust:
        """Roots from a PEM file (one or several certificates), and where the CRL lives."""
        roots = x509.load_pem_x509_certificates(Path(root_path).read_bytes())
        return cls(roots, crl_path)

    def verify(self, chain: list[x509.Certificate], *, at: datetime | None = None,
               usage: Usage | None = None) -> str:
        """Validate a peer's chain (leaf first, then intermediates) and return its URA.

        Path validation to a trusted root at `at` (default now) with the web-PKI client
        policy of `cryptography` (EKU clientAuth, SAN present, key and basic constraints),
        the key usage `usage` needs, then the CRL: the leaf must not be listed (whatever the
        revocation date), and the CRL must be signed by the leaf's issuer, not be from the
        future and still be current both now and at `at` — a certificate is never judged
        with a stale CRL, while a CRL published after `at` still answers for `at`. Any
        failure raises `CertificateRejected`.
        """
        if not chain:
            raise CertificateRejected("No certificate was presented")
        moment = _utc(at)
        leaf, intermediates = chain[0], list(chain[1:])
        verifier = PolicyBuilder().store(self._store).time(moment).build_client_verifier()
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise CertificateRejected(f"Certificate chain not trusted: {exc}") from None
        path = verified.chain
        if len(path) < 2:  # a root presented as a leaf
            raise CertificateRejected("A CA certificate cannot identify an organisation")
        if usage is not None:
            _check_usage(leaf, usage)
        self._check_crl(leaf, issuer=path[1], at=moment)
        try:
            ura = ura_from_certificate(leaf)
        except InvalidOrganisationCertificate as exc:
            raise CertificateRejected(str(exc)) from None
        if ura is None:
            raise CertificateRejected("The certificate names no organisation (no UZI URA)")
        return ura

    # --- revocation ------------------------------------------------------------------------

    def _crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The CRLs in the file as it is now; parsing is skipped when the bytes are unchanged
        (comparing bytes, not mtimes: a rewrite within one timestamp tick must count)."""
        try:
            data = self.crl_path.read_bytes()
        except FileNotFoundError:
            raise CertificateRejected("No CRL published: revocation status unknown") from None
        cached = self._cache
        if cached is not None and cached.data == data:
            return cached.crls
        try:
            blocks = _CRL_PEM.findall(data)
            crls = (tuple(x509.load_pem_x509_crl(block) for block in blocks) if blocks
                    else (x509.load_der_x509_crl(data),))
        except ValueError:
            raise CertificateRejected("The CRL cannot be read: revocation status unknown") \
                from None
        with self._lock:
            self._cache = _CachedCrls(data, crls)
        return crls

    def _check_crl(self, leaf: x509.Certificate, *, issuer: x509.Certificate,
                   at: datetime) -> None:
        candidates = [crl for crl in self._crls() if crl.issuer == issuer.subject]
        if not candidates:
            raise CertificateRejected("The CRL is not from the certificate's issuer")
        valid = [crl for crl in candidates if _signed_by(crl, issuer)]
        if not valid:
            raise CertificateRejected("The CRL signature is invalid: revocation status unknown")
        # with several CRLs of one issuer, the most recent one counts
        crl = max(valid, key=lambda c: c.last_update_utc)
        latest = max(at, datetime.now(UTC))
        if crl.next_update_utc is None or latest > crl.next_update_utc:
            raise CertificateRejected("The CRL has expired: revocation status unknown")
        if crl.last_update_utc > latest + CLOCK_SKEW:
            raise CertificateRejected("The CRL is not yet valid: revocation status unknown")
        entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        if entry is not None:
            raise CertificateRejected(
                f"Certificate {leaf.serial_number:X} was revoked on "
                f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC")


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, TypeError, ValueError):
        return False


def _check_usage(leaf: x509.Certificate, usage: Usage) -> None:
    """A key certified for one purpose must not serve another (a TLS-only key signing
    dossiers, or a signing-only key receiving them). A missing KeyUsage extension is refused
    for signing and encryption: UZI certificates always carry one, so its absence is odd."""
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        if usage == "tls":
            return
        raise CertificateRejected("The certificate has no key usage; it cannot be used to "
                                  f"{usage}") from None
    public_key = leaf.public_key()
    if usage in ("tls", "sign"):
        if not ku.digital_signature:
            raise CertificateRejected(f"The certificate key is not certified for {usage} "
                                      "(no digitalSignature key usage)")
    elif usage == "encrypt":
        if isinstance(public_key, rsa.RSAPublicKey):
            allowed, needed = ku.key_encipherment, "keyEncipherment"
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            allowed, needed = ku.key_agreement, "keyAgreement"
        else:
            raise CertificateRejected("Only RSA and EC certificate keys can receive packages")
        if not allowed:
            raise CertificateRejected(f"The certificate key is not certified for encryption "
                                      f"(no {needed} key usage)")
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"Unknown certificate usage {usage!r}")
