"""The organisation (URA) behind an organisation certificate, for mutual TLS.

Dutch healthcare PKI (the UZI-register of CIBG, under PKIoverheid) puts the identity of the
holder in a `subjectAltName` `otherName` of type OID 2.5.5.5 whose value is an IA5String::

    <OID CA>-<version>-<UZI-nr>-<card type>-<abonneenummer>-<role>-<AGB-code>
    2.16.528.1.1003.1.3.5.5.5-1-12345678-S-90000123-00.000-00000000

* OID CA: the issuing UZI CA: ...5.5.2 Zorgverlener, ...5.5.3 Medewerker op naam,
  ...5.5.4 Medewerker niet op naam, ...5.5.5 Server.
* card type: Z (zorgverlenerpas), N (medewerkerpas op naam), M (medewerkerpas niet op naam),
  S (servercertificaat).
* abonneenummer: the subscriber, i.e. the organisation; this is its URA (8 digits).
* role: `<beroepstitel 2 digits>.<specialisme 3 digits>`, `00.000` for employee cards and
  server certificates; AGB-code: 8 digits, `00000000` when none was given.

Sources (found with the project's search tool): UZI-register CPS v10.2, section 7.1 (the
reference pages 59-60 cited by the Ministry of VWS's own reader, github.com/minvws/pUZI-php,
`src/UziReader.php` and `src/UziConstants.php`, which splits the value on "-" into exactly these
seven fields); "CA model, Pasmodel, Certificaat- en CRL-profielen Zorg CSP" v9.4 (docplayer.nl/
63592685), section "SubjectAltName.otherName"; and the test-certificate generators of the UZI
register's reference implementations (`otherName:2.5.5.5;IA5STRING:<OID CA>-<versie-nr>-
<UZI-nr>-<pastype>-<Abonnee-nr>-<rol>-<AGB-code>`).

Why this module trusts the value: it is only ever read from a certificate that the TLS layer
has already verified against the configured client CA (`EKD_TLS_CLIENT_CA`), so the CA vouches
for the URA. Nothing here checks signatures, validity or revocation.

Only server certificates (card type S) identify an organisation as a *system* client; a
personal UZI pass carries the URA of its employer too, but accepting it here would turn a
person into a machine client with system scopes. `ura_from_certificate` therefore accepts card
type S unless told otherwise.
"""

from __future__ import annotations

import re
from base64 import urlsafe_b64encode
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

#: otherName type-id under which the UZI register stores its subject id (id-at... "2.5.5.5",
#: used by PKIoverheid as "IA5String subject id").
UZI_OTHER_NAME_OID = x509.ObjectIdentifier("2.5.5.5")

#: The UZI-register CAs (PKIoverheid arc 2.16.528.1.1003.1.3.5.5.x).
UZI_CA_OIDS = {
    "2.16.528.1.1003.1.3.5.5.2": "Zorgverlener",
    "2.16.528.1.1003.1.3.5.5.3": "Medewerker op naam",
    "2.16.528.1.1003.1.3.5.5.4": "Medewerker niet op naam",
    "2.16.528.1.1003.1.3.5.5.5": "Server",
}

SERVER_CERTIFICATE = "S"

_SUBJECT_ID = re.compile(
    r"(?P<oid_ca>[0-9]+(?:\.[0-9]+)+)"
    r"-(?P<version>[0-9]+)"
    r"-(?P<uzi_number>[0-9]+)"
    r"-(?P<card_type>[ZNMS])"
    r"-(?P<ura>[0-9]{8})"
    r"-(?P<role>[0-9]{2}\.[0-9]{3})"
    r"-(?P<agb>[0-9]{8})"
)

_IA5STRING_TAG = 0x16


class InvalidOrganisationCertificate(ValueError):
    """The certificate carries a UZI subject id, but not one ekd can accept.

    The message names what is wrong and is safe to show to the client: a certificate is not
    secret and holds no patient data.
    """


@dataclass(frozen=True, slots=True)
class UziSubjectId:
    """The seven fields of a UZI-register subjectAltName otherName value."""

    oid_ca: str
    version: str
    uzi_number: str
    card_type: str
    #: Abonneenummer: the URA of the organisation (8 digits).
    ura: str
    role: str
    agb: str

    @classmethod
    def parse(cls, value: str) -> UziSubjectId:
        """Parse `<OID CA>-<version>-<UZI-nr>-<type>-<URA>-<role>-<AGB>`; raise
        `InvalidOrganisationCertificate` when any field is missing or malformed."""
        match = _SUBJECT_ID.fullmatch(value)
        if match is None:
            parts = value.split("-")
            if len(parts) == 7 and not re.fullmatch(r"[0-9]{8}", parts[4]):
                raise InvalidOrganisationCertificate(
                    "The UZI subjectAltName of the certificate has no 8-digit URA")
            raise InvalidOrganisationCertificate(
                "The UZI subjectAltName of the certificate is not "
                "<OID CA>-<version>-<UZI-nr>-<type>-<URA>-<role>-<AGB>")
        return cls(**match.groupdict())


def _der_ia5string(der: bytes) -> str:
    """Decode one DER IA5String (tag 0x16); cryptography hands otherName values over as raw
    DER, and the UZI profile prescribes exactly this type."""
    if not der or der[0] != _IA5STRING_TAG:
        raise InvalidOrganisationCertificate(
            "The UZI subjectAltName of the certificate is not an IA5String")
    if len(der) < 2:
        raise InvalidOrganisationCertificate("Malformed DER length in the subjectAltName")
    length, offset = der[1], 2
    if length & 0x80:  # long form: the low bits say how many length bytes follow
        count = length & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            raise InvalidOrganisationCertificate("Malformed DER length in the subjectAltName")
        length, offset = int.from_bytes(der[2:2 + count], "big"), 2 + count
    content = der[offset:]
    if len(content) != length:
        raise InvalidOrganisationCertificate("Malformed DER length in the subjectAltName")
    if any(b > 0x7F for b in content):
        raise InvalidOrganisationCertificate(
            "The UZI subjectAltName of the certificate is not ASCII")
    return content.decode("ascii")


def uzi_subject_ids(cert: x509.Certificate) -> list[UziSubjectId]:
    """All UZI subject ids in the certificate's subjectAltName (usually one; none when the
    certificate has no such otherName). Raises on a malformed one rather than skipping it, so
    that a broken certificate is reported instead of silently treated as anonymous."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:  # duplicate or undecodable extensions
        raise InvalidOrganisationCertificate(
            "The subjectAltName of the certificate cannot be read") from exc
    return [UziSubjectId.parse(_der_ia5string(name.value))
            for name in san.get_values_for_type(x509.OtherName)
            if name.type_id == UZI_OTHER_NAME_OID]


def ura_from_certificate(cert: x509.Certificate, *,
                         card_types: frozenset[str] | set[str] | tuple[str, ...] = (
                             SERVER_CERTIFICATE,)) -> str | None:
    """The URA (8 digits) of the organisation the certificate was issued to.

    None when the certificate carries no UZI subject id. Raises
    `InvalidOrganisationCertificate` when it carries a malformed one, one of a card type not in
    `card_types` (default: server certificates only, see the module docstring), or several that
    name different organisations.
    """
    ids = uzi_subject_ids(cert)
    if not ids:
        return None
    for subject_id in ids:
        if subject_id.card_type not in card_types:
            raise InvalidOrganisationCertificate(
                f"UZI card type {subject_id.card_type!r} is not accepted here "
                f"(accepted: {', '.join(sorted(card_types))})")
    uras = {subject_id.ura for subject_id in ids}
    if len(uras) > 1:
        raise InvalidOrganisationCertificate(
            "The certificate names more than one organisation (URA)")
    return uras.pop()


def load_certificate(pem: bytes | str) -> x509.Certificate:
    """One PEM certificate; `InvalidOrganisationCertificate` when it is not one."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError) as exc:
        raise InvalidOrganisationCertificate("Not a PEM certificate") from exc


def ura_from_pem(pem: bytes | str, **kwargs: object) -> str | None:
    """`ura_from_certificate` for a PEM certificate (as the ASGI TLS extension carries it)."""
    return ura_from_certificate(load_certificate(pem), **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CertificateIdentity:
    """What the audit log and the authorisation layer need to know about a client certificate.

    `ura` is None when the certificate names no organisation; callers must then refuse it as a
    means of authentication (it may still be fine for TLS alone).
    """

    ura: str | None
    #: Subject commonName (for an UZI server certificate: the host name of the system).
    subject_cn: str | None
    #: Serial number, upper-case hex (as CA revocation lists and the UZI register show it).
    serial: str
    #: SHA-256 over the DER certificate, lower-case hex.
    sha256: str
    uzi_number: str | None = None
    card_type: str | None = None

    @property
    def x5t_s256(self) -> str:
        """The thumbprint as RFC 8705 `cnf.x5t#S256` (base64url, no padding), for binding an
        access token to this certificate."""
        return urlsafe_b64encode(bytes.fromhex(self.sha256)).rstrip(b"=").decode("ascii")

    @classmethod
    def of(cls, cert: x509.Certificate, **kwargs: object) -> CertificateIdentity:
        """Identity of a (TLS-verified) certificate; raises `InvalidOrganisationCertificate`
        as `ura_from_certificate` does. `kwargs` go to `ura_from_certificate`."""
        ura = ura_from_certificate(cert, **kwargs)  # type: ignore[arg-type]
        ids = uzi_subject_ids(cert) if ura else []
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = cns[0].value if cns else None
        return cls(
            ura=ura,
            subject_cn=cn if isinstance(cn, str) else None,
            serial=format(cert.serial_number, "X"),
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            uzi_number=ids[0].uzi_number if ids else None,
            card_type=ids[0].card_type if ids else None,
        )

