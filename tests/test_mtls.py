"""Mutual TLS: the URA of an organisation certificate reaches the app through a real uvicorn.

All certificates are generated here (never committed); servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ekd.api.tls import (
    TLSConfigError,
    TLSH11Protocol,
    TLSHttpToolsProtocol,
    client_certificate,
    uvicorn_tls_options,
)
from ekd.config import Settings
from ekd.security.certificates import (
    UZI_OTHER_NAME_OID,
    CertificateIdentity,
    InvalidOrganisationCertificate,
    ura_from_certificate,
    ura_from_pem,
)

URA = "90000123"
SERVER_SAN = f"2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{URA}-00.000-00000000"

# --- certificate factory ----------------------------------------------------------------------


def ia5(text: str) -> bytes:
    """DER IA5String (short or long length form)."""
    data = text.encode("ascii")
    if len(data) < 0x80:
        return bytes([0x16, len(data)]) + data
    length = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
    return bytes([0x16, 0x80 | len(length)]) + length + data


def uzi_name(value: str) -> x509.OtherName:
    return x509.OtherName(UZI_OTHER_NAME_OID, ia5(value))


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        cert.write_bytes(self.pem)
        key.write_bytes(self.key_pem)
        return cert, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ekd test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, cn: str, *, san: list[x509.GeneralName] | None = None,
          server: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass
class PKI:
    folder: Path
    ca: Issued
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]  # UZI-style server certificate with URA 90000123
    client_without_ura: tuple[Path, Path]
    foreign_client: tuple[Path, Path]  # same SAN, but issued by another CA

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    import ipaddress

    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca("ekd test CA"), make_ca("someone else's CA")
    (folder / "ca.pem").write_bytes(ca.pem)
    server = issue(ca, "127.0.0.1", server=True,
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server_cert, server_key = server.write(folder, "server")
    client = issue(ca, "system.jgz-test.nl",
                   san=[x509.DNSName("system.jgz-test.nl"), uzi_name(SERVER_SAN)])
    plain = issue(ca, "no-ura.jgz-test.nl", san=[x509.DNSName("no-ura.jgz-test.nl")])
    foreign = issue(other_ca, "system.jgz-test.nl", san=[uzi_name(SERVER_SAN)])
    return PKI(folder, ca, server_cert, server_key, client.write(folder, "client"),
               plain.write(folder, "plain"), foreign.write(folder, "foreign"))


# --- a real uvicorn ---------------------------------------------------------------------------


class EchoApp:
    """Tells the client what the server saw of its certificate."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        tls = scope.get("extensions", {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        cert = client_certificate(scope)
        body = json.dumps({
            "ura": ura_from_pem(chain[0]) if chain else None,
            "ura_via_scope": ura_from_certificate(cert) if cert is not None else None,
            "has_tls": "tls" in scope.get("extensions", {}),
            "chain": len(chain),
            "name": tls.get("client_cert_name"),
            "tls_version": tls.get("tls_version"),
            "cipher_suite": tls.get("cipher_suite"),
            "scheme": scope["scheme"],
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Running:
    url: str
    app: EchoApp


def _serve(options: dict[str, Any]) -> Iterator[Running]:
    app = EchoApp()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", access_log=False, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield Running(f"https://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module", params=["httptools", "h11"])
def mtls_server(request: pytest.FixtureRequest, pki: PKI) -> Iterator[Running]:
    settings = Settings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                        tls_client_ca=str(pki.ca_file))
    yield from _serve(uvicorn_tls_options(settings, http=request.param))


def client_context(pki: PKI, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def test_client_certificate_ura_reaches_the_app(mtls_server: Running, pki: PKI) -> None:
    with httpx.Client(verify=client_context(pki, pki.client)) as client:
        # Two requests on one keep-alive connection: both carry the certificate.
        seen = [client.get(f"{mtls_server.url}/fhir/Patient").json() for _ in range(2)]
    for body in seen:
        assert body["ura"] == URA
        assert body["ura_via_scope"] == URA
        assert body["chain"] == 2  # leaf (read above) and the CA that verified it
        assert "CN=system.jgz-test.nl" in body["name"]
        assert body["tls_version"] in (0x0303, 0x0304)
        assert isinstance(body["cipher_suite"], int) and body["cipher_suite"] > 0
        assert body["scheme"] == "https"


def test_no_client_certificate_still_served(mtls_server: Running, pki: PKI) -> None:
    with httpx.Client(verify=client_context(pki)) as client:
        response = client.get(f"{mtls_server.url}/fhir/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["has_tls"] is True
    assert body["chain"] == 0
    assert body["ura"] is None and body["ura_via_scope"] is None


def test_certificate_without_ura(mtls_server: Running, pki: PKI) -> None:
    with httpx.Client(verify=client_context(pki, pki.client_without_ura)) as client:
        body = client.get(f"{mtls_server.url}/fhir/metadata").json()
    assert body["chain"] >= 1
    assert body["ura"] is None


def test_certificate_of_another_ca_is_refused(mtls_server: Running, pki: PKI) -> None:
    calls = mtls_server.app.calls
    with (httpx.Client(verify=client_context(pki, pki.foreign_client)) as client,
          pytest.raises(httpx.TransportError)):
        client.get(f"{mtls_server.url}/fhir/metadata")
    assert mtls_server.app.calls == calls  # the request never reached the app


def test_tls_without_client_ca_asks_no_certificate(pki: PKI) -> None:
    options = uvicorn_tls_options(Settings(tls_cert=str(pki.server_cert),
                                           tls_key=str(pki.server_key)))
    assert "ssl_ca_certs" not in options
    for running in _serve(options):
        with httpx.Client(verify=client_context(pki, pki.client)) as client:
            body = client.get(f"{running.url}/").json()
        assert body["has_tls"] is True
        assert body["chain"] == 0  # not requested, so not sent


# --- uvicorn options --------------------------------------------------------------------------


def test_no_tls_configured_gives_no_options() -> None:
    assert uvicorn_tls_options(Settings()) == {}


def test_mtls_options(pki: PKI) -> None:
    options = uvicorn_tls_options(Settings(tls_cert=str(pki.server_cert),
                                           tls_key=str(pki.server_key),
                                           tls_client_ca=str(pki.ca_file)))
    assert options["ssl_cert_reqs"] == ssl.CERT_OPTIONAL
    assert options["ssl_ca_certs"] == str(pki.ca_file)
    assert options["http"] is TLSHttpToolsProtocol
    assert uvicorn_tls_options(Settings(tls_cert=str(pki.server_cert),
                                        tls_key=str(pki.server_key)),
                               http="h11")["http"] is TLSH11Protocol


@pytest.mark.parametrize("fields, message", [
    ({"tls_cert": "cert"}, "EKD_TLS_KEY is not set"),
    ({"tls_key": "key"}, "EKD_TLS_CERT is not set"),
    ({"tls_client_ca": "ca"}, "EKD_TLS_CLIENT_CA alone"),
])
def test_half_configuration_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(TLSConfigError, match=message):
        uvicorn_tls_options(Settings(**fields))


def test_unreadable_files_refused(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="EKD_TLS_CERT: no such file"):
        uvicorn_tls_options(Settings(tls_cert=str(tmp_path / "missing.pem"),
                                     tls_key=str(pki.server_key)))
    # A key that does not belong to the certificate.
    with pytest.raises(TLSConfigError, match="do not load"):
        uvicorn_tls_options(Settings(tls_cert=str(pki.server_cert),
                                     tls_key=str(pki.client[1])))
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="EKD_TLS_CLIENT_CA"):
        uvicorn_tls_options(Settings(tls_cert=str(pki.server_cert),
                                     tls_key=str(pki.server_key), tls_client_ca=str(garbage)))


def test_client_certificate_absent_from_plain_scope() -> None:
    assert client_certificate({"type": "http"}) is None
    assert client_certificate({"type": "http", "extensions": {}}) is None
    assert client_certificate({"type": "http", "extensions": {"tls": {
        "client_cert_chain": []}}}) is None


# --- reading the URA --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_ca() -> Issued:
    return make_ca("unit CA")


def with_san(ca: Issued, *names: x509.GeneralName) -> x509.Certificate:
    return issue(ca, "unit.example", san=list(names) or None).cert


def test_ura_from_valid_certificate(test_ca: Issued) -> None:
    cert = with_san(test_ca, x509.DNSName("unit.example"), uzi_name(SERVER_SAN))
    assert ura_from_certificate(cert) == URA
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert ura_from_pem(pem) == URA
    assert ura_from_pem(pem.decode()) == URA


def test_ura_long_der_length(test_ca: Issued) -> None:
    # A value of 128+ characters needs the DER long length form; the parser must follow it.
    value = f"2.16.528.1.1003.1.3.5.5.5-1-{'1' * 100}-S-{URA}-00.000-00000000"
    assert ura_from_certificate(with_san(test_ca, uzi_name(value))) == URA


def test_no_san_or_no_uzi_name_gives_none(test_ca: Issued) -> None:
    assert ura_from_certificate(with_san(test_ca)) is None
    assert ura_from_certificate(with_san(test_ca, x509.DNSName("unit.example"))) is None
    other = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), ia5("x@y"))
    assert ura_from_certificate(with_san(test_ca, other)) is None


@pytest.mark.parametrize("value", [
    "garbage",
    f"2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{URA}-00.000",  # no AGB
    f"2.16.528.1.1003.1.3.5.5.5-1-12345678-X-{URA}-00.000-00000000",  # unknown card type
    f"2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{URA}-00000-00000000",  # role without dot
    f"2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{URA}-00.000-00000000-extra",
    f" 2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{URA}-00.000-00000000",
])
def test_malformed_value_rejected(test_ca: Issued, value: str) -> None:
    with pytest.raises(InvalidOrganisationCertificate):
        ura_from_certificate(with_san(test_ca, uzi_name(value)))


@pytest.mark.parametrize("ura", ["9000012", "900001234", "9000012a", ""])
def test_ura_of_wrong_length_rejected(test_ca: Issued, ura: str) -> None:
    value = f"2.16.528.1.1003.1.3.5.5.5-1-12345678-S-{ura}-00.000-00000000"
    with pytest.raises(InvalidOrganisationCertificate, match="8-digit URA"):
        ura_from_certificate(with_san(test_ca, uzi_name(value)))


def test_value_must_be_ia5string(test_ca: Issued) -> None:
    utf8 = bytes([0x0C, len(SERVER_SAN)]) + SERVER_SAN.encode()
    cert = with_san(test_ca, x509.OtherName(UZI_OTHER_NAME_OID, utf8))
    with pytest.raises(InvalidOrganisationCertificate, match="IA5String"):
        ura_from_certificate(cert)
    # cryptography refuses to build a certificate with broken DER, so check the decoder alone.
    from ekd.security.certificates import _der_ia5string

    assert _der_ia5string(ia5(SERVER_SAN)) == SERVER_SAN
    assert _der_ia5string(ia5("x" * 300)) == "x" * 300
    for broken in (ia5(SERVER_SAN)[:-3], b"\x16", b"\x16\x80", b"\x16\x85" + b"\x00" * 10):
        with pytest.raises(InvalidOrganisationCertificate, match="DER length"):
            _der_ia5string(broken)
    with pytest.raises(InvalidOrganisationCertificate, match="ASCII"):
        _der_ia5string(b"\x16\x02\xc3\xa9")


def test_personal_card_is_not_an_organisation_certificate(test_ca: Issued) -> None:
    value = f"2.16.528.1.1003.1.3.5.5.2-1-123456789-Z-{URA}-01.015-00000000"
    cert = with_san(test_ca, uzi_name(value))
    with pytest.raises(InvalidOrganisationCertificate, match="card type 'Z'"):
        ura_from_certificate(cert)
    assert ura_from_certificate(cert, card_types=("S", "Z")) == URA


def test_two_organisations_in_one_certificate_rejected(test_ca: Issued) -> None:
    second = SERVER_SAN.replace(URA, "90000999")
    cert = with_san(test_ca, uzi_name(SERVER_SAN), uzi_name(second))
    with pytest.raises(InvalidOrganisationCertificate, match="more than one"):
        ura_from_certificate(cert)
    assert ura_from_certificate(with_san(test_ca, uzi_name(SERVER_SAN),
                                         uzi_name(SERVER_SAN))) == URA


def test_certificate_identity(test_ca: Issued) -> None:
    cert = with_san(test_ca, uzi_name(SERVER_SAN))
    identity = CertificateIdentity.of(cert)
    assert identity.ura == URA
    assert identity.subject_cn == "unit.example"
    assert identity.serial == format(cert.serial_number, "X")
    assert identity.sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert len(identity.sha256) == 64
    assert identity.uzi_number == "12345678" and identity.card_type == "S"
    import base64
    assert base64.urlsafe_b64decode(identity.x5t_s256 + "=") == bytes.fromhex(identity.sha256)
    assert CertificateIdentity.of(with_san(test_ca)).ura is None


def test_not_a_pem() -> None:
    with pytest.raises(InvalidOrganisationCertificate, match="Not a PEM"):
        ura_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
