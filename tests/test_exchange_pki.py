"""The test PKI of the simulated exchange (`ekd.exchange.pki`, `ekd pki`).

Why these tests: transfer trusts an organisation only through this chain and its CRL, so each
way a certificate must be refused (expired, not yet valid, revoked, foreign root, stale or forged
CRL) gets a test, and the URA must come out exactly as the mTLS layer reads it.
Keys are generated per test into tmp_path (EC P-256: milliseconds).
"""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from ekd.cli.main import app
from ekd.exchange.pki import CertificateRejected, Pki, init
from ekd.security.certificates import CertificateIdentity, ura_from_certificate

URA = "90000123"
runner = CliRunner()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return init(tmp_path / "pki")


def test_issued_certificate_has_the_uzi_layout(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West", uzi_number="12345678")
    assert ura_from_certificate(issued.cert) == URA
    identity = CertificateIdentity.of(issued.cert)
    assert (identity.uzi_number, identity.card_type, identity.subject_cn) == (
        "12345678", "S", "Thuiszorg West")
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{URA}.jgz.test"]
    usage = issued.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH}
    # files: key private, certificate matches the key
    assert stat.S_IMODE(issued.key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert key.public_key() == issued.cert.public_key()
    assert x509.load_pem_x509_certificate(issued.cert_path.read_bytes()) == issued.cert


def test_init_writes_the_hierarchy(pki: Pki) -> None:
    folder = pki.folder
    for key in ("root.key", "intermediate.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((folder / "chain.pem").read_bytes())
    assert chain == [pki.intermediate, pki.root]
    root_bc = pki.root.extensions.get_extension_for_class(x509.BasicConstraints).value
    int_bc = pki.intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (root_bc.ca, root_bc.path_length, int_bc.ca, int_bc.path_length) == (True, 1, True, 0)
    pki.intermediate.verify_directly_issued_by(pki.root)
    assert (folder / "crl.pem").exists()


def test_verify_accepts_a_valid_chain(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West")
    assert pki.verify([issued.cert, pki.intermediate]) == URA
    # the same after reloading from disk
    assert Pki.load(pki.folder).verify([issued.cert, pki.intermediate]) == URA


def test_rsa_keys_work_too(tmp_path: Path) -> None:
    pki = init(tmp_path / "rsa", key_type="rsa")
    issued = pki.issue(URA, "GGD", key_type="rsa")
    assert pki.verify([issued.cert, pki.intermediate]) == URA


def test_verify_rejects_an_expired_certificate(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West", days=30)
    later = issued.cert.not_valid_after_utc + timedelta(days=1)
    pki.crl(now=later)  # a current CRL at that moment: only the expiry can reject
    with pytest.raises(CertificateRejected, match="not valid at validation time"):
        pki.verify([issued.cert, pki.intermediate], at=later)


def test_verify_rejects_a_not_yet_valid_certificate(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West")
    with pytest.raises(CertificateRejected, match="not valid at validation time"):
        pki.verify([issued.cert, pki.intermediate],
                   at=issued.cert.not_valid_before_utc - timedelta(seconds=1))


def test_revocation_rejects_and_survives_a_reload(pki: Pki) -> None:
    revoked = pki.issue(URA, "Thuiszorg West")
    other = pki.issue("12345678", "GGD")
    pki.revoke(URA)
    with pytest.raises(CertificateRejected, match="revoked"):
        pki.verify([revoked.cert, pki.intermediate])
    assert pki.verify([other.cert, pki.intermediate]) == "12345678"
    # a new CRL from a fresh load still lists it
    reloaded = Pki.load(pki.folder)
    crl = reloaded.crl()
    assert crl.get_revoked_certificate_by_serial_number(revoked.cert.serial_number) is not None
    with pytest.raises(CertificateRejected, match="revoked"):
        reloaded.verify([revoked.cert, pki.intermediate])
    assert {e.ura: e.revoked for e in reloaded.certificates()} == {URA: True, "12345678": False}


def test_verify_rejects_a_certificate_from_another_pki(pki: Pki, tmp_path: Path) -> None:
    stranger = init(tmp_path / "other")
    foreign = stranger.issue(URA, "Impostor")
    with pytest.raises(CertificateRejected, match="not trusted"):
        pki.verify([foreign.cert, stranger.intermediate])


def test_verify_rejects_a_missing_chain_or_ca_as_leaf(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West")
    with pytest.raises(CertificateRejected, match="not trusted"):
        pki.verify([issued.cert])  # intermediate not sent
    with pytest.raises(CertificateRejected):
        pki.verify([])
    with pytest.raises(CertificateRejected):
        pki.verify([pki.intermediate])


def test_crl_fails_closed(pki: Pki) -> None:
    issued = pki.issue(URA, "Thuiszorg West")
    chain = [issued.cert, pki.intermediate]
    # expired CRL (nextUpdate passed)
    pki.crl(now=datetime.now(UTC) - timedelta(days=8))
    with pytest.raises(CertificateRejected, match="expired"):
        pki.verify(chain)
    # the same certificate is fine with a fresh CRL, so the rejection above was the CRL's
    pki.crl()
    assert pki.verify(chain) == URA
    # verifying at a moment past nextUpdate of the current CRL
    with pytest.raises(CertificateRejected, match="expired"):
        pki.verify(chain, at=datetime.now(UTC) + timedelta(days=8))
    # tampered: the issuer name altered, then (separately) the signature altered
    der = bytes(x509.load_pem_x509_crl(pki.crl_path.read_bytes())
                .public_bytes(serialization.Encoding.DER))
    renamed = bytearray(der)
    renamed[der.index(b"Server CA")] ^= 0x01
    pki.crl_path.write_bytes(x509.load_der_x509_crl(bytes(renamed))
                             .public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRejected, match="not from the certificate's issuer"):
        pki.verify(chain)
    bad_signature = bytearray(der)
    bad_signature[-1] ^= 0x01  # the last byte of the ECDSA signature value
    pki.crl_path.write_bytes(x509.load_der_x509_crl(bytes(bad_signature))
                             .public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRejected, match="signature is invalid"):
        pki.verify(chain)
    # a CRL from the right issuer name but signed by another key
    forger = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(pki.intermediate.subject)
              .last_update(now - timedelta(minutes=1)).next_update(now + timedelta(days=7))
              .sign(forger, hashes.SHA256()))
    pki.crl_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateRejected, match="signature is invalid"):
        pki.verify(chain)
    pki.crl_path.write_bytes(b"not a crl")
    with pytest.raises(CertificateRejected, match="cannot be read"):
        pki.verify(chain)
    pki.crl_path.unlink()
    with pytest.raises(CertificateRejected, match="No CRL"):
        pki.verify(chain)


def test_init_refuses_to_overwrite(pki: Pki) -> None:
    root = (pki.folder / "root.pem").read_bytes()
    with pytest.raises(FileExistsError):
        init(pki.folder)
    assert (pki.folder / "root.pem").read_bytes() == root


def test_issue_refuses_a_bad_ura_and_an_existing_certificate(pki: Pki) -> None:
    for bad in ("1234567", "123456789", "9000012a", " 90000123", ""):
        with pytest.raises(ValueError, match="8 digits"):
            pki.issue(bad, "X")
    first = pki.issue(URA, "X")
    with pytest.raises(FileExistsError):
        pki.issue(URA, "X")
    second = pki.issue(URA, "X", replace=True)
    assert second.cert.serial_number != first.cert.serial_number
    assert stat.S_IMODE(second.key_path.stat().st_mode) == 0o600


def test_uzi_numbers_are_unique_per_pki(pki: Pki) -> None:
    a, b = pki.issue(URA, "A"), pki.issue("12345678", "B")
    assert CertificateIdentity.of(a.cert).uzi_number != CertificateIdentity.of(b.cert).uzi_number
    assert json.loads((pki.folder / "state.json").read_text())["next_uzi_number"] == 90000003


def test_cli_init_issue_list_revoke(tmp_path: Path) -> None:
    folder = str(tmp_path / "cli-pki")
    result = runner.invoke(app, ["pki", "init", "--dir", folder])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pki", "init", "--dir", folder])
    assert result.exit_code == 1
    result = runner.invoke(app, ["pki", "issue", "--ura", URA, "--name", "GGD Test",
                                 "--dir", folder])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-pki" / f"{URA}.key").exists()
    result = runner.invoke(app, ["pki", "issue", "--ura", "123", "--name", "X", "--dir", folder])
    assert result.exit_code == 1
    result = runner.invoke(app, ["pki", "list", "--dir", folder], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if URA in line)
    assert "GGD Test" in row and "no" in row.split("│")[-2]
    result = runner.invoke(app, ["pki", "revoke", "--ura", URA, "--dir", folder])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pki", "list", "--dir", folder], env={"COLUMNS": "200"})
    row = next(line for line in result.output.splitlines() if URA in line)
    assert "yes" in row.split("│")[-2]
    pki = Pki.load(Path(folder))
    cert = x509.load_pem_x509_certificate((Path(folder) / f"{URA}.pem").read_bytes())
    with pytest.raises(CertificateRejected, match="revoked"):
        pki.verify([cert, pki.intermediate])
    result = runner.invoke(app, ["pki", "list", "--dir", str(tmp_path / "nothing")])
    assert result.exit_code == 1
