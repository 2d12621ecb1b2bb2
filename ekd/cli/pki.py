"""`ekd pki`: a test PKI in the UZI-register layout for the simulated exchange infrastructure.

Why a CLI: the two-organisation demo and the end-to-end tests need certificates for each
organisation (URA in the subjectAltName, usable for mutual TLS, signing and encryption) and a
CRL, made on the spot instead of committed. See `ekd.exchange.pki`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Test PKI (UZI-register layout): root and intermediate CA, organisation "
         "certificates by URA, revocation list. For tests and demos only: keys are stored "
         "unencrypted (mode 0600).",
    no_args_is_help=True)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

Folder = Annotated[Path, typer.Option(
    "--dir", help="Folder holding the PKI (created by `init`).", envvar="EKD_PKI_DIR")]
Ura = Annotated[str, typer.Option(
    "--ura", help="URA (UZI-register abonneenummer) of the organisation: 8 digits.")]
KeyTypeOption = Annotated[str, typer.Option(
    "--key-type", help="Key type: ec (P-256, fast) or rsa (3072 bits, like real UZI "
                       "certificates).")]

_DEFAULT_DIR = Path("./ekd-pki")


def _key_type(value: str) -> str:
    if value not in ("ec", "rsa"):
        errors.print("--key-type must be 'ec' or 'rsa'")
        raise typer.Exit(2)
    return value


def _load(folder: Path):  # type: ignore[no-untyped-def]  # Pki, imported lazily
    from ekd.exchange.pki import Pki

    try:
        return Pki.load(folder)
    except FileNotFoundError as exc:
        errors.print(str(exc))
        raise typer.Exit(1) from None


@app.command("init")
def init(
    folder: Folder = _DEFAULT_DIR,
    name: Annotated[str, typer.Option(help="Name of the PKI (in the CA subjects).")] =
    "ekd test PKI",
    key_type: KeyTypeOption = "ec",
) -> None:
    """Create a root CA, an intermediate (issuing) CA, chain.pem and an empty CRL.

    Refuses to overwrite an existing PKI: that would silently invalidate every certificate
    issued from it.
    """
    from ekd.exchange import pki

    try:
        created = pki.init(folder, name=name, key_type=_key_type(key_type))  # type: ignore[arg-type]
    except FileExistsError as exc:
        errors.print(str(exc))
        raise typer.Exit(1) from None
    console.print(f"Test PKI created in {created.folder}: trust root.pem; "
                  "send chain.pem along with organisation certificates.")


@app.command("issue")
def issue(
    ura: Ura,
    name: Annotated[str, typer.Option(
        "--name", help="Organisation name (subject CN and O).")],
    folder: Folder = _DEFAULT_DIR,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 365,
    uzi_number: Annotated[str | None, typer.Option(
        "--uzi-number", help="UZI number of the server certificate. Default: the next "
                             "free one of this PKI.", show_default=False)] = None,
    dns_name: Annotated[str | None, typer.Option(
        "--dns", help="DNS name in the subjectAltName, for TLS.",
        show_default="<ura>.jgz.test")] = None,
    key_type: KeyTypeOption = "ec",
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace an existing certificate for this URA (the old one stays "
                          "valid until revoked).")] = False,
) -> None:
    """Issue an organisation (UZI server) certificate: writes <URA>.pem and <URA>.key.

    The URA goes into the subjectAltName otherName 2.5.5.5 (as in the UZI register).
    Usable for TLS client and server authentication, signing and key encipherment.
    """
    pki = _load(folder)
    try:
        issued = pki.issue(ura, name, days=days, uzi_number=uzi_number, dns_name=dns_name,
                           key_type=_key_type(key_type), replace=replace)  # type: ignore[arg-type]
    except (ValueError, FileExistsError) as exc:
        errors.print(str(exc))
        raise typer.Exit(1) from None
    console.print(f"Issued URA {ura} (serial {issued.cert.serial_number:X}): "
                  f"{issued.cert_path}, key {issued.key_path}, chain {issued.chain_path}")


@app.command("revoke")
def revoke(ura: Ura, folder: Folder = _DEFAULT_DIR) -> None:
    """Revoke the current certificate of a URA and publish a new crl.pem.

    Receivers that check the CRL (fail closed) reject the certificate from then on.
    """
    pki = _load(folder)
    try:
        pki.revoke(ura)
    except (KeyError, ValueError) as exc:
        errors.print(str(exc).strip("'\""))
        raise typer.Exit(1) from None
    console.print(f"Revoked the certificate of URA {ura}; CRL published at {pki.crl_path}")


@app.command("list")
def list_(folder: Folder = _DEFAULT_DIR) -> None:
    """Show the organisation certificates: URA, name, serial, not-after, revoked."""
    pki = _load(folder)
    table = Table(title=f"Organisation certificates in {folder}")
    for column in ("URA", "name", "serial", "not after (UTC)", "revoked"):
        table.add_column(column, overflow="fold")
    for entry in pki.certificates():
        table.add_row(entry.ura, entry.name, format(entry.serial, "X"),
                      f"{entry.not_after:%Y-%m-%d %H:%M}", "yes" if entry.revoked else "no")
    console.print(table)
