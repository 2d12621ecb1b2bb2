"""The signed directory of the simulated exchange (`ekd.exchange.directory`).

Why these tests: a sender encrypts to the certificate the directory lists and the relay routes
to the endpoint it lists, so a forged or altered entry must never verify (TRANSFER.md: "tampered
directory entry → send refused"), whatever the JWS header claims: `none`, HS256 with the public
key as secret, keys injected through `jwk`/`jku`/`x5u`. Keys are generated per test (P-256).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from typer.testing import CliRunner

from ekd.api.app import build_registry, build_validator
from ekd.cli.main import app
from ekd.config import Settings
from ekd.exchange.directory import (
    ENTRY_TYPE,
    Directory,
    DirectoryEntry,
    DirectoryError,
    DirectoryView,
    as_fhir,
    parse_postcodes,
)
from ekd.exchange.pki import Pki, init
from ekd.fhir import naming_systems
from ekd.terminology.service import TerminologyService

A, B, C = "90000101", "90000102", "90000103"
runner = CliRunner()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = init(tmp_path_factory.mktemp("pki"))
    for ura, name in ((A, "GGD Amsterdam"), (B, "GGD Utrecht"), (C, "Relay")):
        pki.issue(ura, name)
    return pki


def cert(pki: Pki, ura: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pki.folder / f"{ura}.pem").read_bytes())


@pytest.fixture
def directory(tmp_path: Path, pki: Pki) -> Directory:
    directory = Directory.init(tmp_path / "directory")
    directory.add(DirectoryEntry(A, "GGD Amsterdam", "https://a.jgz.test:8443/", cert(pki, A),
                                 postcodes=((1000, 1099), (1100, 1109))))
    directory.add(DirectoryEntry(B, "GGD Utrecht", "https://b.jgz.test", cert(pki, B),
                                 postcodes=((3500, 3599),)))
    directory.add(DirectoryEntry(C, "Landelijke relay", "https://relay.jgz.test",
                                 cert(pki, C), role="relay"))
    return directory


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def directory_key(directory: Directory) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(
        (directory.folder / "directory.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def raw_jws(header: dict[str, Any], payload: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """An ES256 compact JWS made by hand, so a test controls every header byte."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return signing_input.decode() + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def view(directory: Directory, entries: list[str] | None = None) -> DirectoryView:
    return DirectoryView(directory.public_key_path,
                         directory.signed_entries() if entries is None else entries)


# --- signing and verifying ---------------------------------------------------------------------


def test_entries_are_signed_and_verify(directory: Directory, pki: Pki) -> None:
    assert stat.S_IMODE((directory.folder / "directory.key").stat().st_mode) == 0o600
    tokens = json.loads((directory.folder / "entries.json").read_text())
    assert tokens == directory.signed_entries() and len(tokens) == 3
    header = json.loads(base64.urlsafe_b64decode(tokens[0].split(".")[0] + "=="))
    assert set(header) == {"alg", "typ", "kid"} and header["alg"] == "ES256"
    assert header["typ"] == ENTRY_TYPE
    claims = payload_of(tokens[0])
    assert isinstance(claims["iat"], int)
    assert x509.load_der_x509_certificate(base64.b64decode(claims["certificate"])) == cert(
        pki, A)

    seen = view(directory)
    a = seen.entry(A)
    assert (a.name, a.endpoint, a.role, a.postcodes) == (
        "GGD Amsterdam", "https://a.jgz.test:8443", "organisation", ((1000, 1099), (1100, 1109)))
    assert a.inbox == "https://a.jgz.test:8443/exchange/inbox"
    assert a.certificate == cert(pki, A)
    assert seen.entry(C).role == "relay"
    assert [e.ura for e in seen.entries()] == [A, B, C] and len(seen) == 3
    with pytest.raises(DirectoryError, match="90000999 is not in the directory"):
        seen.entry("90000999")


def test_a_view_can_be_built_from_the_folder_and_the_public_key_object(
        directory: Directory) -> None:
    public = directory_key(directory).public_key()
    assert DirectoryView(public, directory.signed_entries()).entry(B).name == "GGD Utrecht"
    assert DirectoryView.from_folder(directory.folder).entry(B).name == "GGD Utrecht"


def test_tampered_entry_is_rejected(directory: Directory) -> None:
    tokens = directory.signed_entries()
    header, _, signature = tokens[1].split(".")
    claims = payload_of(tokens[1])
    claims["endpoint"] = "https://attacker.example"  # divert B's dossiers
    forged = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(DirectoryError, match="signature is invalid"):
        view(directory, [tokens[0], forged, tokens[2]])
    # flipping one signature byte is as bad
    sig = bytearray(base64.urlsafe_b64decode(signature + "=="))
    sig[5] ^= 1
    with pytest.raises(DirectoryError, match="signature is invalid"):
        view(directory, [f"{header}.{tokens[1].split('.')[1]}.{b64url(bytes(sig))}"])


def test_entries_signed_by_another_key_are_rejected(directory: Directory,
                                                    tmp_path: Path) -> None:
    other = Directory.init(tmp_path / "other")
    # our entries under the other directory's public key: kid mismatch and bad signature
    with pytest.raises(DirectoryError, match="another key"):
        DirectoryView(other.public_key_path, directory.signed_entries())
    # an entry made with another key but no kid at all still fails on the signature
    claims = payload_of(directory.signed_entries()[0])
    token = raw_jws({"alg": "ES256"}, json.dumps(claims).encode(), directory_key(other))
    with pytest.raises(DirectoryError, match="signature is invalid"):
        view(directory, [token])


def test_alg_none_is_rejected(directory: Directory) -> None:
    claims = json.dumps(payload_of(directory.signed_entries()[0])).encode()
    for signature in ("", "c2ln"):
        token = f"{b64url(json.dumps({'alg': 'none'}).encode())}.{b64url(claims)}.{signature}"
        with pytest.raises(DirectoryError):
            view(directory, [token])
    token = f"{b64url(json.dumps({'alg': 'none'}).encode())}.{b64url(claims)}.c2ln"
    with pytest.raises(DirectoryError, match="'none'"):
        view(directory, [token])


def test_hs256_with_the_public_key_as_secret_is_rejected(directory: Directory) -> None:
    """The classic confusion: a verifier that lets the header pick the algorithm would use
    the (public) ES256 key as an HMAC secret that everybody knows."""
    secret = directory.public_key_path.read_bytes()
    claims = payload_of(directory.signed_entries()[0])
    claims["endpoint"] = "https://attacker.example"
    signing_input = (f"{b64url(json.dumps({'alg': 'HS256'}).encode())}."
                     f"{b64url(json.dumps(claims).encode())}")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(DirectoryError, match="'HS256'"):
        view(directory, [f"{signing_input}.{b64url(mac)}"])


@pytest.mark.parametrize("extra", [
    {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}},
    {"jku": "https://attacker.example/keys"},
    {"x5u": "https://attacker.example/cert"},
    {"x5c": ["AAAA"]},
    {"crit": ["exp"], "exp": 1},
    {"zip": "DEF"},
])
def test_headers_beyond_alg_typ_kid_are_rejected(directory: Directory,
                                                 extra: dict[str, Any]) -> None:
    claims = json.dumps(payload_of(directory.signed_entries()[0])).encode()
    token = raw_jws({"alg": "ES256", **extra}, claims, directory_key(directory))
    with pytest.raises(DirectoryError, match="forbidden JWS header"):
        view(directory, [token])


def test_a_jws_of_another_type_is_not_an_entry(directory: Directory) -> None:
    claims = json.dumps(payload_of(directory.signed_entries()[0])).encode()
    token = raw_jws({"alg": "ES256", "typ": "JWT"}, claims, directory_key(directory))
    with pytest.raises(DirectoryError, match="not a directory entry"):
        view(directory, [token])
    # the same claims, correctly typed and signed, verify (the check above was the type)
    good = raw_jws({"alg": "ES256", "typ": ENTRY_TYPE}, claims, directory_key(directory))
    assert view(directory, [good]).entry(A).name == "GGD Amsterdam"


def test_a_signed_entry_must_carry_the_certificate_of_its_own_ura(directory: Directory,
                                                                  pki: Pki) -> None:
    """Even the directory's own key cannot make B's certificate stand for A: the URA in the
    certificate is what TLS and signatures show."""
    with pytest.raises(ValueError, match=f"certificate is for URA {B}"):
        DirectoryEntry(A, "GGD Amsterdam", "https://a.jgz.test", cert(pki, B))
    claims = payload_of(directory.signed_entries()[0])
    claims["certificate"] = payload_of(directory.signed_entries()[1])["certificate"]
    token = raw_jws({"alg": "ES256"}, json.dumps(claims).encode(), directory_key(directory))
    with pytest.raises(DirectoryError, match="malformed"):
        view(directory, [token])


@pytest.mark.parametrize("garbage", ["", "a.b", "a.b.c.d", "!!.??.**", "eyJ9.e30.c2ln",
                                     "x" * 70000])
def test_garbage_is_a_directory_error(directory: Directory, garbage: str) -> None:
    with pytest.raises(DirectoryError):
        view(directory, [garbage])
    with pytest.raises(DirectoryError):
        DirectoryView(directory.public_key_path, {"not": "a list"})  # type: ignore[arg-type]


def test_a_replayed_older_entry_loses_to_the_newer_one(directory: Directory) -> None:
    current = directory.signed_entries()[1]
    old_claims = {**payload_of(current), "iat": 1, "endpoint": "https://old.jgz.test"}
    old = raw_jws({"alg": "ES256", "typ": ENTRY_TYPE}, json.dumps(old_claims).encode(),
                  directory_key(directory))
    assert view(directory, [current, old]).entry(B).endpoint == "https://b.jgz.test"
    assert view(directory, [old, current]).entry(B).endpoint == "https://b.jgz.test"


def test_replace_and_remove(directory: Directory, pki: Pki) -> None:
    directory.add(DirectoryEntry(B, "GGD Regio Utrecht", "https://b2.jgz.test", cert(pki, B)))
    assert view(directory).entry(B).endpoint == "https://b2.jgz.test"
    assert len(directory.signed_entries()) == 3
    directory.remove(B)
    assert B not in view(directory)
    with pytest.raises(DirectoryError, match="not in the directory"):
        directory.remove(B)


def test_init_refuses_to_overwrite(directory: Directory) -> None:
    with pytest.raises(FileExistsError):
        Directory.init(directory.folder)


@pytest.mark.parametrize("endpoint", ["http://a.jgz.test", "https://a.jgz.test/fhir",
                                      "https://a.jgz.test?x=1", "https://", "ftp://a",
                                      "https://user@a.jgz.test", "https://a.jgz.test:99999"])
def test_endpoint_is_an_https_base_url(pki: Pki, endpoint: str) -> None:
    with pytest.raises(ValueError):
        DirectoryEntry(A, "GGD Amsterdam", endpoint, cert(pki, A))


def test_entry_fields_are_checked(pki: Pki) -> None:
    with pytest.raises(ValueError, match="8 digits"):
        DirectoryEntry("1234", "X", "https://a.jgz.test", cert(pki, A))
    with pytest.raises(ValueError, match="name"):
        DirectoryEntry(A, " ", "https://a.jgz.test", cert(pki, A))
    with pytest.raises(ValueError, match="role"):
        DirectoryEntry(A, "X", "https://a.jgz.test", cert(pki, A), role="admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="postcode"):
        DirectoryEntry(A, "X", "https://a.jgz.test", cert(pki, A), postcodes=((999, 1000),))


# --- routing by postcode ----------------------------------------------------------------------


def test_postcode_routing(directory: Directory, pki: Pki) -> None:
    seen = view(directory)
    assert seen.for_postcode("1012 AB").ura == A  # type: ignore[union-attr]
    assert seen.for_postcode("1109").ura == A  # type: ignore[union-attr]
    assert seen.for_postcode("3584CS").ura == B  # type: ignore[union-attr]
    assert seen.for_postcode("2000 AA") is None
    with pytest.raises(ValueError, match="postcode"):
        seen.for_postcode("0123 AB")
    # ranges must not overlap: a child's GGD must never be a guess
    with pytest.raises(DirectoryError, match="overlap"):
        directory.add(DirectoryEntry(B, "GGD Utrecht", "https://b.jgz.test", cert(pki, B),
                                     postcodes=((1090, 1200),)))
    assert parse_postcodes("1000-1099, 2000") == ((1000, 1099), (2000, 2000))
    with pytest.raises(ValueError):
        parse_postcodes("10-20")


# --- FHIR -------------------------------------------------------------------------------------


def test_as_fhir_is_an_mcsd_style_organization_and_endpoint(directory: Directory) -> None:
    entry = view(directory).entry(A)
    bundle = as_fhir(entry)
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    organization, endpoint = (e["resource"] for e in bundle["entry"])
    assert organization["identifier"] == [{"system": naming_systems.URA, "value": A}]
    assert organization["name"] == "GGD Amsterdam"
    assert organization["endpoint"] == [{"reference": f"Endpoint/{endpoint['id']}"}]
    assert endpoint["status"] == "active"
    assert endpoint["connectionType"] == {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "hl7-fhir-rest"}
    assert endpoint["address"] == "https://a.jgz.test:8443/exchange/inbox"
    assert endpoint["payloadType"]
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    assert as_fhir(entry) == bundle  # stable ids

    registry = build_registry(Settings())
    validator = build_validator(registry, TerminologyService(registry))
    for resource in (bundle, organization, endpoint):
        errors = [i for i in validator.validate(resource) if i.severity in ("error", "fatal")]
        assert errors == [], errors


# --- CLI --------------------------------------------------------------------------------------


def test_cli_init_add_list_remove(tmp_path: Path, pki: Pki) -> None:
    folder = str(tmp_path / "dir")
    result = runner.invoke(app, ["exchange", "directory", "init", "--folder", folder])
    assert result.exit_code == 0, result.output
    assert "directory-public.pem" in result.output
    again = runner.invoke(app, ["exchange", "directory", "init", "--folder", folder])
    assert again.exit_code == 1
    result = runner.invoke(app, [
        "exchange", "directory", "add", "--folder", folder, "--ura", A, "--name",
        "GGD Amsterdam", "--endpoint", "https://a.jgz.test:8443",
        "--cert", str(pki.folder / f"{A}.pem"), "--postcodes", "1000-1099,1100-1109"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [
        "exchange", "directory", "add", "--folder", folder, "--ura", C, "--name", "Relay",
        "--endpoint", "https://relay.jgz.test", "--cert", str(pki.folder / f"{C}.pem"),
        "--role", "relay"])
    assert result.exit_code == 0, result.output
    wrong = runner.invoke(app, [
        "exchange", "directory", "add", "--folder", folder, "--ura", B, "--name", "X",
        "--endpoint", "https://b.jgz.test", "--cert", str(pki.folder / f"{A}.pem")])
    assert wrong.exit_code == 1 and "certificate is for URA" in wrong.output
    listed = runner.invoke(app, ["exchange", "directory", "list", "--folder", folder],
                           env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert A in listed.output and "1000-1099" in listed.output and "relay" in listed.output
    assert "2 entries, signatures verified" in listed.output
    removed = runner.invoke(app, ["exchange", "directory", "remove", "--folder", folder,
                                  "--ura", C])
    assert removed.exit_code == 0, removed.output
    assert [e.ura for e in DirectoryView.from_folder(folder).entries()] == [A]


def test_cli_list_reports_a_tampered_directory(directory: Directory) -> None:
    path = directory.folder / "entries.json"
    tokens = json.loads(path.read_text())
    header, _, signature = tokens[0].split(".")
    claims = {**payload_of(tokens[0]), "name": "Evil"}
    tokens[0] = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    path.write_text(json.dumps(tokens))
    result = runner.invoke(app, ["exchange", "directory", "list", "--folder",
                                 str(directory.folder)])
    assert result.exit_code == 1
    assert "signature is invalid" in result.output
