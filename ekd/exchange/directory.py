"""The national address book of the simulated exchange: organisations by URA, signed.

Why signed entries: TRANSFER.md ("A directory: organisations by URA with their endpoint and
certificates, entries signed by the directory's key"; threat "tampered directory entry → send
refused"). A sender encrypts the dossier to the certificate it finds here and the relay routes
to the endpoint it finds here, so whoever could alter an entry could read or divert dossiers.
An ekd therefore trusts the directory's *public key*, never the network it fetched the entries
over: each entry is a compact JWS (ES256) that `DirectoryView` verifies on its own, with an
explicit algorithm allow-list and no header beyond `alg`/`typ`/`kid` (no `jku`, `x5u`, `jwk`:
the key must never come from the message). The shape follows the national "Generieke
Functies" direction (IHE mCSD: Organization + Endpoint keyed by URA), which `as_fhir` renders.

Files of the directory service (`Directory`), in one folder::

    directory.key            EC P-256 signing key (0600; never leaves the service)
    directory-public.pem     what every ekd is configured to trust
    entries.json             JSON list of compact JWS strings, one per organisation
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import NAMESPACE_URL, uuid5

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from ekd.exchange.pki import write_file
from ekd.fhir import naming_systems
from ekd.security.certificates import InvalidOrganisationCertificate, ura_from_certificate

Role = Literal["organisation", "relay"]
ROLES: tuple[str, ...] = ("organisation", "relay")

#: The only signature algorithm accepted for entries (TRANSFER.md: no `none`, no HS*).
ALGORITHMS = ("ES256",)
#: Media type of an entry, so that another JWS signed with the same key cannot pass as one.
ENTRY_TYPE = "ekd-directory-entry+jws"
_ALLOWED_HEADERS = frozenset({"alg", "typ", "kid"})
_MAX_ENTRY = 64 * 1024  # an entry holds one certificate: a few kB

KEY_FILE, PUBLIC_KEY_FILE, ENTRIES_FILE = "directory.key", "directory-public.pem", "entries.json"
#: Where an ekd receives packages and receipts, below its directory endpoint.
INBOX_PATH = "/exchange/inbox"

_URA = re.compile(r"[0-9]{8}")
_POSTCODE = re.compile(r"\s*([1-9][0-9]{3})\s*(?:[A-Za-z]{2})?\s*")


class DirectoryError(Exception):
    """The directory cannot be used for this: a tampered or foreign entry, an unknown URA,
    an ambiguous route. Sending must stop; the message says why and holds no secrets."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise DirectoryError("A directory entry is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def normalise_endpoint(url: str) -> str:
    """`https://host[:port]` without path, query or trailing slash: the inbox and directory
    paths are appended to it, so anything else would silently route elsewhere."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"Not a URL: {url!r}") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"An endpoint is an https URL with a host: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"An endpoint is a base URL without path, query or user: {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" + (f":{port}" if port is not None else "")


def parse_postcodes(text: str) -> tuple[tuple[int, int], ...]:
    """`1000-1099,2000` → ((1000, 1099), (2000, 2000)): the 4-digit part of Dutch postcodes
    a GGD serves (the letters never cross a municipality border in practice)."""
    ranges = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        try:
            ranges.append((int(low), int(high or low)))
        except ValueError:
            raise ValueError(f"Not a postcode range: {part!r} (use e.g. 1000-1099)") from None
    return _check_postcodes(ranges)


def _check_postcodes(ranges: Any) -> tuple[tuple[int, int], ...]:
    result = []
    for item in ranges:
        if (not isinstance(item, list | tuple) or len(item) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in item)):
            raise ValueError("Postcode ranges are pairs of 4-digit numbers")
        low, high = item
        if not (1000 <= low <= high <= 9999):
            raise ValueError(f"Not a postcode range: {low}-{high} (1000 <= low <= high <= 9999)")
        result.append((low, high))
    return tuple(sorted(result))


def postcode_number(postcode: str) -> int:
    """The 4 digits of a Dutch postcode (`1234 AB`, `1234AB` or `1234`)."""
    match = _POSTCODE.fullmatch(postcode or "")
    if match is None:
        raise ValueError(f"Not a Dutch postcode: {postcode!r}")
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One organisation: where its ekd is reached and the certificate that proves it.

    `certificate` is what packages are encrypted to and what its signatures and TLS must
    show; its URA must be `ura` (checked here, so an entry can never name one organisation
    and carry another's key). `postcodes` route a child to the GGD that serves its address.
    """

    ura: str
    name: str
    endpoint: str
    certificate: x509.Certificate
    postcodes: tuple[tuple[int, int], ...] = ()
    role: Role = "organisation"

    def __post_init__(self) -> None:
        if not isinstance(self.ura, str) or not _URA.fullmatch(self.ura):
            raise ValueError("A URA is exactly 8 digits")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("An organisation name is required")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        object.__setattr__(self, "endpoint", normalise_endpoint(self.endpoint))
        object.__setattr__(self, "postcodes", _check_postcodes(self.postcodes))
        try:
            cert_ura = ura_from_certificate(self.certificate)
        except InvalidOrganisationCertificate as exc:
            raise ValueError(str(exc)) from None
        if cert_ura != self.ura:
            raise ValueError(f"The certificate is for URA {cert_ura}, not {self.ura}")

    @property
    def inbox(self) -> str:
        """Where the relay delivers this organisation's messages."""
        return self.endpoint + INBOX_PATH

    def serves(self, number: int) -> bool:
        return any(low <= number <= high for low, high in self.postcodes)

    def claims(self) -> dict[str, Any]:
        """The JWS payload (without `iat`): the certificate as base64 DER (like `x5c`)."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {"ura": self.ura, "name": self.name, "endpoint": self.endpoint,
                "certificate": base64.b64encode(der).decode("ascii"),
                "postcodes": [list(r) for r in self.postcodes], "role": self.role}

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> DirectoryEntry:
        """Inverse of `claims`; ValueError for anything malformed."""
        expected = {"ura", "name", "endpoint", "certificate", "postcodes", "role", "iat"}
        if set(claims) - expected or not {"ura", "name", "endpoint", "certificate"} <= set(
                claims):
            raise ValueError("A directory entry has missing or unknown fields")
        try:
            der = base64.b64decode(claims["certificate"], validate=True)
            certificate = x509.load_der_x509_certificate(der)
        except (TypeError, ValueError, binascii.Error) as exc:
            raise ValueError("The certificate of a directory entry cannot be read") from exc
        for name in ("ura", "name", "endpoint"):
            if not isinstance(claims[name], str):
                raise ValueError(f"{name} of a directory entry is not a string")
        return cls(ura=claims["ura"], name=claims["name"], endpoint=claims["endpoint"],
                   certificate=certificate, postcodes=claims.get("postcodes") or (),
                   role=claims.get("role", "organisation"))


def _thumbprint(key: ECKey) -> str:
    return str(key.thumbprint())


def _load_public_key(public_key: ec.EllipticCurvePublicKey | ECKey | bytes | str | Path
                     ) -> ECKey:
    """The directory's public key from a PEM file/bytes or a key object; only P-256, the
    curve ES256 requires."""
    if isinstance(public_key, ECKey):
        key = public_key
    else:
        if isinstance(public_key, Path):
            public_key = public_key.read_bytes()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key = public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            key = ECKey.import_key(public_key)
        except (JoseError, ValueError, TypeError) as exc:
            raise DirectoryError("The directory public key cannot be read") from exc
    if key.is_private:
        key = ECKey.import_key(key.as_dict(private=False))
    if key.curve_name != "P-256":
        raise DirectoryError("The directory key must be an EC P-256 key (ES256)")
    return key


def verify_entry(token: str, key: ECKey) -> tuple[DirectoryEntry, int]:
    """Verify one signed entry with the trusted key; (entry, iat) or DirectoryError.

    The header is checked before any cryptography: only `alg`, `typ` and `kid`; `alg` must be
    ES256 (not `none`, not HS256 with the public key as secret); `typ` must be an entry's.
    """
    if not isinstance(token, str) or len(token) > _MAX_ENTRY:
        raise DirectoryError("A directory entry is not a compact JWS of a sensible size")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise DirectoryError("A directory entry is not a compact JWS (header.payload.signature)")
    try:
        header = json.loads(_b64url_decode(parts[0]))
    except (ValueError, UnicodeDecodeError):
        raise DirectoryError("A directory entry has an unreadable JWS header") from None
    if not isinstance(header, dict):
        raise DirectoryError("A directory entry has an unreadable JWS header")
    extra = set(header) - _ALLOWED_HEADERS
    if extra:
        raise DirectoryError(
            f"A directory entry has forbidden JWS header(s): {', '.join(sorted(extra))}")
    if header.get("alg") not in ALGORITHMS:
        raise DirectoryError(f"A directory entry is signed with {header.get('alg')!r}; "
                             f"only {', '.join(ALGORITHMS)} is accepted")
    if header.get("typ", ENTRY_TYPE) != ENTRY_TYPE:
        raise DirectoryError(f"A JWS of type {header.get('typ')!r} is not a directory entry")
    if "kid" in header and header["kid"] != _thumbprint(key):
        raise DirectoryError("A directory entry is signed with another key than the "
                             "directory's")
    try:
        signed = jws.deserialize_compact(token, key, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError) as exc:
        raise DirectoryError("A directory entry's signature is invalid: the entry was "
                             "altered or not signed by the directory") from exc
    try:
        claims = json.loads(signed.payload)
        if not isinstance(claims, dict):
            raise ValueError("payload is not a JSON object")
        iat = claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise ValueError("iat is missing")
        return DirectoryEntry.from_claims(claims), iat
    except ValueError as exc:
        raise DirectoryError(f"A signed directory entry is malformed: {exc}") from None


class DirectoryView:
    """What an ekd (or the relay) knows of the directory: verified entries only.

    Every entry is verified on construction; one bad entry rejects the whole view (a
    directory that serves a forged entry is not to be trusted for the others either). With
    several entries for one URA (e.g. an old copy replayed next to a new one) the newest
    `iat` wins.
    """

    def __init__(self, public_key: ec.EllipticCurvePublicKey | ECKey | bytes | str | Path,
                 signed_entries: list[str]) -> None:
        if not isinstance(signed_entries, list):
            raise DirectoryError("The directory answer is not a list of signed entries")
        key = _load_public_key(public_key)
        newest: dict[str, tuple[int, DirectoryEntry]] = {}
        for token in signed_entries:
            entry, iat = verify_entry(token, key)
            if entry.ura not in newest or iat > newest[entry.ura][0]:
                newest[entry.ura] = (iat, entry)
        self._entries = {ura: entry for ura, (_, entry) in sorted(newest.items())}
        self.signed_entries = list(signed_entries)

    @classmethod
    def from_folder(cls, folder: Path | str) -> DirectoryView:
        """The directory service's own folder (tests, CLI, a relay on the same host)."""
        folder = Path(folder)
        try:
            public = (folder / PUBLIC_KEY_FILE).read_bytes()
        except FileNotFoundError:
            raise DirectoryError(f"No directory in {folder} (run `ekd exchange directory "
                                 "init` first)") from None
        return cls(public, _read_entries(folder))

    def __contains__(self, ura: object) -> bool:
        return ura in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[DirectoryEntry]:
        return list(self._entries.values())

    def entry(self, ura: str) -> DirectoryEntry:
        try:
            return self._entries[ura]
        except KeyError:
            raise DirectoryError(f"URA {ura} is not in the directory") from None

    def for_postcode(self, postcode: str) -> DirectoryEntry | None:
        """The GGD serving a child's postcode; None when no organisation does, DirectoryError
        when several do (routing a dossier must never be a guess)."""
        number = postcode_number(postcode)
        found = [e for e in self._entries.values()
                 if e.role == "organisation" and e.serves(number)]
        if len(found) > 1:
            raise DirectoryError(f"Postcode {number} is served by several organisations: "
                                 + ", ".join(e.ura for e in found))
        return found[0] if found else None


def _read_entries(folder: Path) -> list[str]:
    try:
        data = json.loads((folder / ENTRIES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except ValueError:
        raise DirectoryError(f"{folder / ENTRIES_FILE} is not JSON") from None
    if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
        raise DirectoryError(f"{folder / ENTRIES_FILE} is not a list of signed entries")
    return data


class Directory:
    """The directory *service*: holds the signing key and signs entries. Create the folder
    with `Directory.init`, open it with `Directory(folder)`."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        try:
            self._key = ECKey.import_key((self.folder / KEY_FILE).read_bytes())
        except FileNotFoundError:
            raise DirectoryError(f"No directory in {self.folder} (run `ekd exchange "
                                 "directory init` first)") from None
        self.public_key_path = self.folder / PUBLIC_KEY_FILE

    @classmethod
    def init(cls, folder: Path | str) -> Directory:
        """A new signing key and an empty entry list; refuses to overwrite a directory
        (a new key would invalidate what every ekd trusts)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / KEY_FILE).exists() or (folder / PUBLIC_KEY_FILE).exists():
            raise FileExistsError(f"{folder} already holds a directory; not overwriting it")
        key = ec.generate_private_key(ec.SECP256R1())
        write_file(folder / KEY_FILE, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), mode=0o600)
        write_file(folder / PUBLIC_KEY_FILE, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        write_file(folder / ENTRIES_FILE, b"[]\n")
        return cls(folder)

    def sign(self, entry: DirectoryEntry) -> str:
        claims = {**entry.claims(), "iat": int(time.time())}
        payload = json.dumps(claims, sort_keys=True, separators=(",", ":"))
        header = {"alg": "ES256", "typ": ENTRY_TYPE, "kid": _thumbprint(self._key)}
        return jws.serialize_compact(header, payload, self._key, algorithms=list(ALGORITHMS))

    def signed_entries(self) -> list[str]:
        return _read_entries(self.folder)

    def view(self) -> DirectoryView:
        return DirectoryView(self.public_key_path, self.signed_entries())

    def add(self, entry: DirectoryEntry) -> None:
        """Add or replace the entry of `entry.ura`. Postcode ranges must not overlap another
        organisation's: routing by postcode has to be unambiguous."""
        tokens = self._tokens()
        key = _load_public_key(self.public_key_path)
        for ura, token in tokens.items():
            if ura == entry.ura:
                continue
            other, _ = verify_entry(token, key)
            for low, high in entry.postcodes:
                for o_low, o_high in other.postcodes:
                    if low <= o_high and o_low <= high:
                        raise DirectoryError(
                            f"Postcodes {low}-{high} overlap {o_low}-{o_high} of URA "
                            f"{other.ura} ({other.name})")
        tokens[entry.ura] = self.sign(entry)
        self._save(tokens)

    def remove(self, ura: str) -> None:
        tokens = self._tokens()
        if tokens.pop(ura, None) is None:
            raise DirectoryError(f"URA {ura} is not in the directory")
        self._save(tokens)

    def _tokens(self) -> dict[str, str]:
        """The newest signed entry per URA, each verified (a tampered file is not re-signed
        by accident)."""
        key = _load_public_key(self.public_key_path)
        best: dict[str, tuple[int, str]] = {}
        for token in self.signed_entries():
            entry, iat = verify_entry(token, key)
            if entry.ura not in best or iat > best[entry.ura][0]:
                best[entry.ura] = (iat, token)
        return {ura: token for ura, (_, token) in best.items()}

    def _save(self, tokens: dict[str, str]) -> None:
        data = json.dumps([tokens[ura] for ura in sorted(tokens)], indent=1) + "\n"
        write_file(self.folder / ENTRIES_FILE, data.encode("ascii"), replace=True)


# --- FHIR (IHE mCSD-style Organization + Endpoint) ---------------------------------------------

ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
ENDPOINT_PAYLOAD_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"


def organization_id(entry: DirectoryEntry) -> str:
    return f"ura-{entry.ura}"


def endpoint_id(entry: DirectoryEntry) -> str:
    return f"ura-{entry.ura}-inbox"


def organization_resource(entry: DirectoryEntry) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": organization_id(entry),
        "identifier": [{"system": naming_systems.URA, "value": entry.ura}],
        "active": True,
        "name": entry.name,
        "endpoint": [{"reference": f"Endpoint/{endpoint_id(entry)}"}],
    }


def endpoint_resource(entry: DirectoryEntry) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": endpoint_id(entry),
        "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "hl7-fhir-rest"},
        "name": f"{entry.name}: {'relay' if entry.role == 'relay' else 'dossier inbox'}",
        "managingOrganization": {"reference": f"Organization/{organization_id(entry)}",
                                 "identifier": {"system": naming_systems.URA,
                                                "value": entry.ura}},
        "payloadType": [{
            "coding": [{"system": ENDPOINT_PAYLOAD_TYPE, "code": "any", "display": "Any"}],
            "text": "JGZ dossier transfer (signed and encrypted FHIR Bundle)"}],
        "payloadMimeType": ["application/jose"],
        "address": entry.endpoint if entry.role == "relay" else entry.inbox,
    }


def as_fhir(entry: DirectoryEntry) -> dict[str, Any]:
    """The entry as a FHIR R4 collection Bundle: Organization (URA identifier, name, endpoint
    reference) and its Endpoint. fullUrls are stable `urn:uuid`s derived from the URA."""
    resources = [organization_resource(entry), endpoint_resource(entry)]
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{uuid5(NAMESPACE_URL, _ref(r))}", "resource": r}
                      for r in resources]}


def _ref(resource: dict[str, Any]) -> str:
    return f"urn:ekd:directory:{resource['resourceType']}/{resource['id']}"


def fetch_directory(relay_url: str, public_key_path: Path | str, ssl_context: Any,
                    *, timeout: float = 30.0) -> DirectoryView:
    """The directory as the relay publishes it (`GET {relay}/directory/entries`), verified
    with the directory's public key: the relay and the network are not trusted for it."""
    import httpx

    url = relay_url.rstrip("/") + "/directory/entries"
    try:
        response = httpx.get(url, verify=ssl_context, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DirectoryError(f"The directory at {url} cannot be reached: {exc}") from None
    if response.status_code != 200:
        raise DirectoryError(f"The directory at {url} answered HTTP {response.status_code}")
    try:
        entries = response.json()
    except ValueError:
        raise DirectoryError(f"The directory at {url} did not answer JSON") from None
    return DirectoryView(Path(public_key_path), entries)
