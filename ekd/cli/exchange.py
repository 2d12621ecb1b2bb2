"""`ekd exchange`: the simulated national exchange infrastructure — directory and relay.

Why a CLI: the two-organisation demo and the end-to-end tests need a signed address book of
organisations and a running store-and-forward relay, set up on the spot from the test PKI
(`ekd pki`). See `ekd.exchange.directory`, `ekd.exchange.relay_http` and TRANSFER.md.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Simulated national exchange: a signed directory of organisations (URA, endpoint, "
         "certificate) and a store-and-forward relay reached over mutual TLS.",
    no_args_is_help=True)
directory_app = typer.Typer(
    help="The directory: organisations by URA, each entry signed with the directory's key.",
    no_args_is_help=True)
app.add_typer(directory_app, name="directory")

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

_DEFAULT_DIRECTORY = Path("./ekd-directory")
DirectoryFolder = Annotated[Path, typer.Option(
    "--folder", help="Folder of the directory (signing key, public key, entries.json).",
    envvar="EKD_DIRECTORY_DIR")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _open(folder: Path):  # type: ignore[no-untyped-def]  # Directory, imported lazily
    from ekd.exchange.directory import Directory, DirectoryError

    try:
        return Directory(folder)
    except DirectoryError as exc:
        raise _fail(str(exc)) from None


@directory_app.command("init")
def directory_init(folder: DirectoryFolder = _DEFAULT_DIRECTORY) -> None:
    """Create the directory's signing key (EC P-256) and an empty entry list.

    Every ekd is configured with directory-public.pem and trusts entries only when signed
    with the matching key. Refuses to overwrite an existing directory.
    """
    from ekd.exchange.directory import Directory

    try:
        created = Directory.init(folder)
    except FileExistsError as exc:
        raise _fail(str(exc)) from None
    console.print(f"Directory created in {created.folder}; organisations trust "
                  f"{created.public_key_path}")


@directory_app.command("add")
def directory_add(
    ura: Annotated[str, typer.Option(help="URA of the organisation (8 digits).")],
    name: Annotated[str, typer.Option(help="Organisation name.")],
    endpoint: Annotated[str, typer.Option(
        help="https base URL of the organisation's ekd (messages go to "
             "<endpoint>/exchange/inbox), or of the relay.")],
    cert: Annotated[Path, typer.Option(
        help="The organisation certificate (PEM), e.g. <pki>/<ura>.pem: what packages are "
             "encrypted to and what its TLS and signatures must show.")],
    folder: DirectoryFolder = _DEFAULT_DIRECTORY,
    postcodes: Annotated[str, typer.Option(
        help="Postcode ranges served as GGD, e.g. 1000-1099,2000-2099 (routing by a child's "
             "address).")] = "",
    role: Annotated[str, typer.Option(help="organisation or relay.")] = "organisation",
) -> None:
    """Add (or replace) the signed entry of an organisation or of the relay."""
    from cryptography import x509

    from ekd.exchange.directory import DirectoryEntry, DirectoryError, parse_postcodes

    directory = _open(folder)
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"--cert: not a readable PEM certificate ({exc})") from None
    try:
        entry = DirectoryEntry(ura=ura, name=name, endpoint=endpoint, certificate=certificate,
                               postcodes=parse_postcodes(postcodes), role=role)  # type: ignore[arg-type]
        directory.add(entry)
    except (ValueError, DirectoryError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"Signed entry for URA {entry.ura} ({entry.name}, {entry.role}) at "
                  f"{entry.endpoint}")


@directory_app.command("remove")
def directory_remove(
    ura: Annotated[str, typer.Option(help="URA of the organisation to remove.")],
    folder: DirectoryFolder = _DEFAULT_DIRECTORY,
) -> None:
    """Remove an organisation: the relay refuses its messages from then on."""
    from ekd.exchange.directory import DirectoryError

    try:
        _open(folder).remove(ura)
    except DirectoryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"Removed URA {ura}")


@directory_app.command("list")
def directory_list(folder: DirectoryFolder = _DEFAULT_DIRECTORY) -> None:
    """Show the entries, each verified with the directory's public key."""
    from ekd.exchange.directory import DirectoryError, DirectoryView

    try:
        view = DirectoryView.from_folder(folder)
    except DirectoryError as exc:
        raise _fail(str(exc)) from None
    table = Table("URA", "name", "role", "endpoint", "postcodes", "certificate")
    for entry in view.entries():
        ranges = ", ".join(f"{low}-{high}" if low != high else str(low)
                           for low, high in entry.postcodes)
        table.add_row(entry.ura, entry.name, entry.role, entry.endpoint, ranges or "-",
                      f"{entry.certificate.serial_number:X} until "
                      f"{entry.certificate.not_valid_after_utc:%Y-%m-%d}")
    console.print(table)
    console.print(f"{len(view)} entries, signatures verified")


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus the relay's own logger (stored/delivered lines) on stderr."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ekd"] = {"handlers": ["default"], "level": level.upper(),
                                "propagate": False}
    return config


@app.command("serve")
def serve(
    pki: Annotated[Path, typer.Option(
        help="Folder of the test PKI (`ekd pki init`): the relay's certificate and key, root "
             "and CRL are taken from it unless given separately.", envvar="EKD_PKI_DIR")],
    directory: Annotated[Path, typer.Option(
        help="Folder of the directory (`ekd exchange directory init`); re-read when "
             "entries.json changes.", envvar="EKD_DIRECTORY_DIR")],
    ura: Annotated[str, typer.Option(
        help="URA of the relay itself; it must be in the directory with role relay.")],
    db: Annotated[str, typer.Option(
        "--db", help="SQLAlchemy URL of the relay's message store (tables relay_*); "
                     "PostgreSQL works too, e.g. postgresql+psycopg://user@host/db.",
        envvar="EKD_RELAY_DATABASE_URL")] = "sqlite:///./ekd-relay.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (HTTPS).")] = 8443,
    cert: Annotated[Path | None, typer.Option(
        help="Relay certificate (PEM).", show_default="<pki>/<ura>.pem")] = None,
    key: Annotated[Path | None, typer.Option(
        help="Relay private key (PEM).", show_default="<pki>/<ura>.key")] = None,
    chain: Annotated[Path | None, typer.Option(
        help="Intermediate CA certificates sent along with the relay certificate.",
        show_default="<pki>/chain.pem")] = None,
    roots: Annotated[Path | None, typer.Option(
        help="Trusted root certificate(s) for clients and recipients.",
        show_default="<pki>/root.pem")] = None,
    crl: Annotated[Path | None, typer.Option(
        help="CRL file, checked on every connection (fail closed).",
        show_default="<pki>/crl.pem")] = None,
    max_body: Annotated[int, typer.Option(
        help="Largest POST /messages request in bytes (larger: 413).", min=1024)] =
    64 * 1024 * 1024,
    retry_base: Annotated[float, typer.Option(
        help="Delivery backoff: seconds before the first retry, doubling after each.",
        min=0.001)] = 1.0,
    retry_cap: Annotated[float, typer.Option(
        help="Delivery backoff: longest wait between attempts (seconds).", min=0.001)] = 60.0,
    max_attempts: Annotated[int, typer.Option(
        help="Delivery attempts before a message is marked failed.", min=1)] = 20,
    timeout: Annotated[float, typer.Option(
        help="Timeout of one delivery request (seconds).", min=0.1)] = 30.0,
    lease: Annotated[float, typer.Option(
        help="How long a delivery claim holds (seconds; longer than --timeout). After a "
             "crash, a claimed message waits this long before another attempt.",
        min=0.2)] = 120.0,
    poll: Annotated[float, typer.Option(
        help="Seconds between looks for due messages when idle.", min=0.01)] = 1.0,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the relay (store-and-forward switch point) over HTTPS.

    Organisations POST sealed messages to /messages over mutual TLS with
    their organisation certificate. The relay stores each one durably,
    answers 202 and pushes it to the recipient's <endpoint>/exchange/inbox
    over mutual TLS with its own certificate, retrying with exponential
    backoff. /directory/* publishes the signed directory (no client
    certificate needed). The relay never decrypts anything.
    """
    import uvicorn

    from ekd.api.tls import TLSHttpToolsProtocol
    from ekd.exchange.channels import client_context, server_context
    from ekd.exchange.delivery import Deliverer, RetryPolicy
    from ekd.exchange.directory import DirectoryError
    from ekd.exchange.relay_http import FolderDirectory, Relay, create_app
    from ekd.exchange.relay_store import RelayStore
    from ekd.exchange.trust import CertificateRejected, Credentials, Trust

    cert = cert or pki / f"{ura}.pem"
    key = key or pki / f"{ura}.key"
    chain = chain or pki / "chain.pem"
    roots = roots or pki / "root.pem"
    crl = crl or pki / "crl.pem"
    for label, path in (("--cert", cert), ("--key", key), ("--chain", chain),
                        ("--roots", roots)):
        if not path.is_file():
            raise _fail(f"{label}: no such file: {path}", 2)
    try:
        credentials = Credentials.load(cert, key, chain)
        trust = Trust.load(roots, crl)
        trust.verify(credentials.chain, usage="tls")
    except CertificateRejected as exc:
        raise _fail(f"The relay's own certificate is not valid: {exc}", 2) from None
    except ValueError as exc:
        raise _fail(f"The relay's certificate files do not load: {exc}", 2) from None
    if credentials.ura != ura:
        raise _fail(f"{cert} is the certificate of URA {credentials.ura}, not {ura}", 2)
    folder = FolderDirectory(directory)
    try:
        view = folder()
        own = view.entry(ura)
    except DirectoryError as exc:
        raise _fail(str(exc), 2) from None
    if own.role != "relay" or own.certificate != credentials.certificate:
        raise _fail(f"The directory must list URA {ura} as role relay with certificate "
                    f"{cert}", 2)
    try:
        retry = RetryPolicy(base=retry_base, cap=retry_cap, max_attempts=max_attempts)
        store = RelayStore(db)
        deliverer = Deliverer(store, folder, trust, client_context(cert, key, chain, roots),
                              retry=retry, lease=lease, timeout=timeout)
        tls = server_context(cert, key, chain, roots, client_cert=ssl.CERT_OPTIONAL)
    except (ValueError, ssl.SSLError, OSError) as exc:
        raise _fail(f"The relay cannot start: {exc}", 2) from None
    except Exception as exc:  # a database that cannot be reached: say so, no trace
        raise _fail(f"The relay's message store cannot be opened ({store_hint(db)}): "
                    f"{type(exc).__name__}: {str(exc).strip()[:200]}", 2) from None
    app_ = create_app(Relay(store, folder, trust, max_body=max_body), deliverer, poll=poll)
    errors.print(f"[bold]ekd relay[/bold] URA {ura} ({own.name})", highlight=False)
    errors.print(f"  listening   https://{host}:{port} (mutual TLS for /messages; "
                 "/directory and /health without client certificate)", highlight=False)
    errors.print(f"  store       {store.display_url}", highlight=False)
    errors.print(f"  directory   {len(view)} entries from {directory}, verified with "
                 f"{folder.public_key_path}", highlight=False)
    errors.print(f"  delivery    retry {retry.base:g}s doubling to {retry.cap:g}s, "
                 f"{retry.max_attempts} attempts; CRL {crl}", highlight=False)
    config = uvicorn.Config(app_, host=host, port=port, http=TLSHttpToolsProtocol,
                            ssl_certfile=str(cert), ssl_keyfile=str(key),
                            log_level=log_level.lower(), access_log=False,
                            log_config=_log_config(log_level), lifespan="on")
    config.load()
    config.ssl = tls  # with intermediates and optional client certificates (channels.py)
    uvicorn.Server(config).run()


def store_hint(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "unparseable URL"
