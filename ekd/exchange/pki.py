"""A test PKI in the shape of the UZI register: root CA, intermediate CA, organisation
certificates, and a CRL.

Why: dossier transfer authenticates organisations with UZI server certificates (PKIoverheid)
and checks their revocation status; tests, demos and the two-organisation compose setup need
certificates of exactly that layout without access to the real register. Everything lives in
one folder::

    root.pem, root.key            self-signed root (CA, pathlen 1)
    intermediate.pem/.key         the issuing CA (CA, pathlen 0), signs certificates and the CRL
    chain.pem                     intermediate + root, what an organisation sends along
    crl.pem                       the published CRL (signed by the intermediate)
    state.json                    revoked serials, CRL number, next UZI number
    <URA>.pem, <URA>.key          one organisation certificate per URA

Keys are written unencrypted with mode 0600: this is a *test* PKI, generated on the spot and
never committed. Only the `cryptography` package is used.

`Pki.verify` is what a receiver does with a peer's chain; the logic lives in
`ekd.exchange.trust.Trust` (roots and CRL only, no CA keys), which real receivers use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ekd.exchange.trust import CertificateRejected, Trust
from ekd.security.certificates import SERVER_CERTIFICATE, UZI_OTHER_NAME_OID

#: Re-exported: callers catch it from here since before `Trust` existed.
__all__ = ["CRL_DAYS", "TEST_DOMAIN", "UZI_SERVER_CA_OID", "CertificateRejected", "Entry", "Issued",
           "KeyType", "Pki", "PrivateKey", "check_ura", "init", "write_file"]

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: The UZI-register server CA (see `ekd.security.certificates.UZI_CA_OIDS`).
UZI_SERVER_CA_OID = "2.16.528.1.1003.1.3.5.5.5"
#: Domain for the DNS names of test organisations (`.test` is reserved, RFC 2606).
TEST_DOMAIN = "jgz.test"
#: How long a freshly signed CRL stays valid (nextUpdate).
CRL_DAYS = 7

_URA = re.compile(r"[0-9]{8}")
_ROOT_DAYS = 3650
_INTERMEDIATE_DAYS = 1825
#: Back-dating of notBefore/lastUpdate so that a peer whose clock runs slightly behind accepts
#: a certificate issued a moment ago.
_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Issued:
    """An organisation certificate just issued, and where its files are."""

    ura: str
    cert: x509.Certificate
    cert_path: Path
    key_path: Path
    chain_path: Path


@dataclass(frozen=True, slots=True)
class Entry:
    """One organisation certificate in the folder, as `ekd pki list` shows it."""

    ura: str
    name: str
    serial: int
    not_after: datetime
    revoked: bool


def _new_key(key_type: KeyType) -> PrivateKey:
    """EC P-256 by default: as strong as RSA 3072 for this purpose and key generation takes
    microseconds instead of up to a second, which keeps tests fast. RSA 3072 stays available
    because the real UZI certificates are RSA (and PS256/RSA-OAEP-256 must be tested too)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def write_file(path: Path, data: bytes, *, mode: int = 0o644, replace: bool = False) -> None:
    """Write a file created with `mode` from the start (a key is never world-readable, not
    even for a moment); without `replace`, an existing file is an error."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ia5string(text: str) -> bytes:
    """DER IA5String: cryptography takes otherName values as raw DER, and the UZI profile
    prescribes IA5String (what `ekd.security.certificates` insists on when reading)."""
    data = text.encode("ascii")
    if len(data) < 0x80:
        return bytes([0x16, len(data)]) + data
    length = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
    return bytes([0x16, 0x80 | len(length)]) + length + data


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def check_ura(ura: str) -> str:
    """The URA (UZI-register abonneenummer) is 8 digits; anything else would produce a
    certificate that `ura_from_certificate` refuses."""
    if not isinstance(ura, str) or not _URA.fullmatch(ura):
        raise ValueError("A URA is exactly 8 digits")
    return ura


def _ca_certificate(*, subject: x509.Name, issuer: x509.Name, public_key: object,
                    signing_key: PrivateKey, path_length: int, days: int,
                    issuer_key: object) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),  # type: ignore[arg-type]
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key),  # type: ignore[arg-type]
                       critical=False)
        .sign(signing_key, hashes.SHA256())
    )


class Pki:
    """A test PKI in a folder. Create it with `init`, open an existing one with `load`."""

    def __init__(self, folder: Path, root: x509.Certificate, intermediate: x509.Certificate,
                 intermediate_key: PrivateKey) -> None:
        self.folder = folder
        self.root = root
        self.intermediate = intermediate
        self._intermediate_key = intermediate_key

    # --- files -----------------------------------------------------------------------------

    @property
    def chain_path(self) -> Path:
        return self.folder / "chain.pem"

    @property
    def crl_path(self) -> Path:
        return self.folder / "crl.pem"

    @property
    def _state_path(self) -> Path:
        return self.folder / "state.json"

    def _state(self) -> dict[str, object]:
        return json.loads(self._state_path.read_text(encoding="utf-8"))

    def _save_state(self, state: dict[str, object]) -> None:
        write_file(self._state_path, json.dumps(state, indent=2, sort_keys=True).encode() + b"\n",
               replace=True)

    # --- creation --------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path) -> Pki:
        """Open the PKI in `folder` (made by `init`); FileNotFoundError when there is none."""
        folder = Path(folder)
        if not (folder / "root.pem").exists():
            raise FileNotFoundError(f"No test PKI in {folder} (run `ekd pki init` first)")
        root = x509.load_pem_x509_certificate((folder / "root.pem").read_bytes())
        intermediate = x509.load_pem_x509_certificate((folder / "intermediate.pem").read_bytes())
        key = serialization.load_pem_private_key(
            (folder / "intermediate.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("intermediate.key is neither an EC nor an RSA key")
        return cls(folder, root, intermediate, key)

    # --- issuing ---------------------------------------------------------------------------

    def issue(self, ura: str, name: str, *, days: int = 365, uzi_number: str | None = None,
              key_type: KeyType = "ec", dns_name: str | None = None,
              replace: bool = False) -> Issued:
        """Issue an organisation certificate in the UZI server-certificate layout.

        Subject CN=O=`name`, serialNumber=UZI number (as the UZI register does); subjectAltName
        with a DNS name (`<ura>.jgz.test` by default, for TLS) and the otherName 2.5.5.5
        `<CA-OID>-1-<UZI-nr>-S-<URA>-00.000-00000000` that `ura_from_certificate` reads. Usable
        for TLS client and server, for signing and for key encipherment (JWE to this key).
        An existing certificate for the URA is only replaced with `replace=True` (the old one
        stays valid until revoked).
        """
        check_ura(ura)
        if not name or not name.strip():
            raise ValueError("An organisation name is required")
        if days < 1:
            raise ValueError("days must be at least 1")
        cert_path, key_path = self.folder / f"{ura}.pem", self.folder / f"{ura}.key"
        if not replace and (cert_path.exists() or key_path.exists()):
            raise FileExistsError(f"A certificate for URA {ura} exists already")
        state = self._state()
        if uzi_number is None:
            next_uzi = int(state.get("next_uzi_number", 90000001))  # type: ignore[call-overload]
            uzi_number = str(next_uzi)
            state["next_uzi_number"] = next_uzi + 1
        if not re.fullmatch(r"[0-9]+", uzi_number):
            raise ValueError("A UZI number is digits only")
        key = _new_key(key_type)
        now = datetime.now(UTC)
        subject_id = (f"{UZI_SERVER_CA_OID}-1-{uzi_number}-{SERVER_CERTIFICATE}-{ura}"
                      "-00.000-00000000")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, uzi_number),
            ]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=key_type == "ec", key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(dns_name or f"{ura}.{TEST_DOMAIN}"),
                x509.OtherName(UZI_OTHER_NAME_OID, _ia5string(subject_id)),
            ]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._intermediate_key.public_key()), critical=False)
            .sign(self._intermediate_key, hashes.SHA256())
        )
        write_file(key_path, _key_pem(key), mode=0o600, replace=replace)
        write_file(cert_path, _cert_pem(cert), replace=replace)
        self._save_state(state)
        return Issued(ura=ura, cert=cert, cert_path=cert_path, key_path=key_path,
                      chain_path=self.chain_path)

    def certificates(self) -> list[Entry]:
        """The organisation certificates in the folder (one per URA, the latest issued)."""
        revoked = self._revoked_serials()
        entries = []
        for path in sorted(self.folder.glob("*.pem")):
            if not _URA.fullmatch(path.stem):
                continue
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
            entries.append(Entry(
                ura=path.stem, name=str(names[0].value) if names else "",
                serial=cert.serial_number, not_after=cert.not_valid_after_utc,
                revoked=cert.serial_number in revoked))
        return entries

    # --- revocation ------------------------------------------------------------------------

    def _revoked_serials(self) -> dict[int, str]:
        revoked = self._state().get("revoked", {})
        assert isinstance(revoked, dict)
        return {int(serial, 16): str(when) for serial, when in revoked.items()}

    def revoke(self, ura_or_serial: str | int) -> None:
        """Revoke the current certificate of a URA (8 digits) or a certificate by serial
        (int, or hex string), and publish a new CRL. Revocations live in `state.json`, so
        they survive restarts and a re-issued CRL still lists them. Revoking twice is a
        no-op (the first revocation date stays)."""
        if isinstance(ura_or_serial, str) and _URA.fullmatch(ura_or_serial):
            path = self.folder / f"{ura_or_serial}.pem"
            if not path.exists():
                raise KeyError(f"No certificate for URA {ura_or_serial}")
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        elif isinstance(ura_or_serial, int):
            serial = ura_or_serial
        else:
            try:
                serial = int(ura_or_serial, 16)
            except ValueError:
                raise ValueError("Give a URA (8 digits) or a serial number (hex)") from None
        state = self._state()
        revoked = state.setdefault("revoked", {})
        assert isinstance(revoked, dict)
        revoked.setdefault(format(serial, "X"), datetime.now(UTC).isoformat())
        self._save_state(state)
        self.crl()

    def crl(self, *, now: datetime | None = None,
            days: int = CRL_DAYS) -> x509.CertificateRevocationList:
        """Sign a fresh CRL (lastUpdate `now`, nextUpdate `now` + `days`) listing every revoked
        serial, and publish it as `crl.pem`. `now` is for tests that need an expired CRL."""
        moment = _utc(now)
        state = self._state()
        number = int(state.get("crl_number", 0)) + 1  # type: ignore[call-overload]
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.intermediate.subject)
            .last_update(moment - _SKEW).next_update(moment + timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._intermediate_key.public_key()), critical=False)
        )
        for serial, when in sorted(self._revoked_serials().items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(datetime.fromisoformat(when)).build())
        crl = builder.sign(self._intermediate_key, hashes.SHA256())
        state["crl_number"] = number
        self._save_state(state)
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), replace=True)
        return crl

    # --- verification ----------------------------------------------------------------------

    def verify(self, cert_chain: list[x509.Certificate], *, at: datetime | None = None) -> str:
        """Validate a peer's chain (leaf first, then intermediates) and return its URA, as a
        receiver trusting only this PKI's root and CRL would: see `Trust.verify`. Any failure
        raises `CertificateRejected`."""
        return self.trust().verify(cert_chain, at=at)

    def trust(self) -> Trust:
        """What a receiver of this PKI's certificates holds: the root and the CRL file."""
        return Trust([self.root], self.crl_path)


def init(folder: Path, *, name: str = "ekd test PKI", key_type: KeyType = "ec") -> Pki:
    """Create a new PKI in `folder`: root and intermediate CA, chain, empty CRL.

    Refuses (FileExistsError) when the folder already holds a PKI: overwriting would orphan
    every certificate issued so far and silently change what peers trust.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("root.pem", "root.key", "intermediate.pem", "intermediate.key", "state.json")
    if any((folder / n).exists() for n in names):
        raise FileExistsError(f"{folder} already holds a test PKI; not overwriting it")
    root_key, intermediate_key = _new_key(key_type), _new_key(key_type)
    root_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                           x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root CA")])
    intermediate_name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Server CA")])
    root = _ca_certificate(subject=root_name, issuer=root_name,
                           public_key=root_key.public_key(), signing_key=root_key,
                           issuer_key=root_key.public_key(), path_length=1, days=_ROOT_DAYS)
    intermediate = _ca_certificate(
        subject=intermediate_name, issuer=root_name, public_key=intermediate_key.public_key(),
        signing_key=root_key, issuer_key=root_key.public_key(), path_length=0,
        days=_INTERMEDIATE_DAYS)
    write_file(folder / "root.key", _key_pem(root_key), mode=0o600)
    write_file(folder / "intermediate.key", _key_pem(intermediate_key), mode=0o600)
    write_file(folder / "root.pem", _cert_pem(root))
    write_file(folder / "intermediate.pem", _cert_pem(intermediate))
    write_file(folder / "chain.pem", _cert_pem(intermediate) + _cert_pem(root))
    write_file(folder / "state.json", b'{"crl_number": 0, "revoked": {}}\n')
    pki = Pki(folder, root, intermediate, intermediate_key)
    pki.crl()
    return pki
