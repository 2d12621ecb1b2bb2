"""`ekd`: run the server and manage its database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ekd import FHIR_VERSION, __version__
from ekd.cli.audit import app as audit_app
from ekd.cli.auth import client_app, keys_app, token_app
from ekd.cli.bds import app as bds_app
from ekd.cli.conformance import app as conformance_app
from ekd.cli.demo import demo_data as demo_data_command
from ekd.cli.exchange import app as exchange_app
from ekd.cli.pki import app as pki_app
from ekd.cli.reindex import reindex as reindex_command
from ekd.cli.transfer import app as transfer_app
from ekd.cli.validate import validate as validate_command
from ekd.config import Settings

app = typer.Typer(
    help="ekd: FHIR R4 backend for the Digitaal Dossier JGZ.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Database schema (migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(conformance_app, name="conformance")
app.add_typer(bds_app, name="bds")
app.add_typer(audit_app, name="audit")
app.add_typer(client_app, name="client")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")
app.add_typer(pki_app, name="pki")
app.add_typer(exchange_app, name="exchange")
app.add_typer(transfer_app, name="transfer")
app.command("demo-data")(demo_data_command)
app.command("validate")(validate_command)
app.command("reindex")(reindex_command)
# soft_wrap: a long database URL or path must stay on one line (copyable, greppable).
console = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="EKD_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. Default: sqlite:///./ekd.db",
        show_default=False,
    ),
]


def _settings(database_url: str | None, **extra: object) -> Settings:
    return Settings.from_env(database_url=database_url, **extra)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.", envvar="EKD_HOST",
                                             show_default="127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.", envvar="EKD_PORT",
                                             show_default="8080")] = None,
    database_url: DatabaseUrl = None,
    workers: Annotated[int, typer.Option(help="Server processes (one per core is a good start).",
                                         envvar="EKD_WORKERS", min=1)] = 1,
    mode: Annotated[str | None, typer.Option(
        help="development: create signing keys and a local client, print a token. "
             "production: refuse to start without keys and registered clients.",
        envvar="EKD_MODE", show_default="development")] = None,
    dev_role: Annotated[str, typer.Option(
        help="Role of the development token printed at start.")] = "jeugdarts",
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the FHIR server (migrates an empty database first)."""
    import os

    import uvicorn

    from ekd.api.tls import TLSConfigError, uvicorn_tls_options
    from ekd.store.database import Database

    if mode is not None and mode.lower() not in ("development", "production"):
        raise typer.BadParameter("development or production", param_hint="--mode")
    settings = _settings(database_url, host=host, port=port,
                         mode=mode.lower() if mode else None)
    try:
        tls = uvicorn_tls_options(settings)
    except TLSConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    scheme = "https" if tls else "http"
    db = Database(settings.database_url)
    console.print(f"[bold]ekd {__version__}[/bold] FHIR R{FHIR_VERSION}")
    console.print(f"  database    {db.display_url}")
    _ensure_schema(db)
    _seed_definitions(settings, db)
    base = settings.base_url or f"{scheme}://{settings.host}:{settings.port}/fhir"
    _security(settings, db, base, dev_role)
    db.dispose()
    # Worker processes build their app from the environment (ekd.api.app:app_from_env).
    os.environ["EKD_DATABASE_URL"] = settings.database_url
    os.environ["EKD_WORKERS"] = str(workers)
    os.environ["EKD_MODE"] = settings.mode
    # The token issuer is derived from where the server listens: workers must agree.
    os.environ["EKD_HOST"], os.environ["EKD_PORT"] = settings.host, str(settings.port)
    console.print(f"  FHIR base   {base}")
    console.print(f"  OpenAPI     {scheme}://{settings.host}:{settings.port}/docs")
    if settings.tls_client_ca:
        console.print("  mutual TLS  organisation certificates accepted "
                      f"(CA {settings.tls_client_ca})")
    if workers > 1:
        console.print(f"  workers     {workers}")
    _print_transfer(settings)
    uvicorn.run("ekd.api.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=workers, log_level=log_level, access_log=False,
                log_config=_log_config(log_level), **tls)


def _security(settings: Settings, db: object, base: str, dev_role: str) -> None:
    """Production: keys and clients must be there. Development: make them, print a token."""
    from ekd.security.principal import Role
    from ekd.security.service import DEV_ORG, Security, SecurityConfigError, default_issuer
    from ekd.security.tokens import TokenError

    try:
        security = Security.build(settings, db, issuer=default_issuer(settings))  # type: ignore[arg-type]
    except SecurityConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    token_url = base.removesuffix("/fhir") + "/auth/token"
    if settings.mode == "production":
        console.print(f"  auth        production; {len(security.keys)} signing key(s), "
                      f"tokens at {token_url}")
        return
    try:
        role = Role(dev_role)
        org = _exchange_org(settings) or DEV_ORG
        token = security.ensure_dev_client(role, audience=base, org=org,
                                           lifetime=DEV_TOKEN_LIFETIME)
        client = security.dev_client(org)
    except (ValueError, TokenError) as exc:
        console.print(f"[red]No development token for role {dev_role!r}: {exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"  auth        [yellow]development mode[/yellow] (EKD_MODE=production for "
                  f"real use); keys in {settings.key_dir}, tokens at {token_url}")
    console.print(f"              client {client.client_id}, organisation URA {client.org}; "
                  f"more tokens: ekd token create --role <role>")
    console.print(f"  token       {role.value}, valid {DEV_TOKEN_LIFETIME // 3600} h; send it as "
                  "Authorization: Bearer $TOKEN")
    # The token alone on its own line, so it can be copied or cut out by scripts.
    console.print(f"TOKEN={token}", highlight=False, soft_wrap=True)


#: A development token lasts a working day (tokens from /auth/token: EKD_TOKEN_LIFETIME).
DEV_TOKEN_LIFETIME = 8 * 3600


def _log_config(level: str) -> dict:
    """uvicorn's logging plus ekd's own loggers (the access log and warnings) on stderr."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["ekd"] = {"handlers": ["default"], "level": level.upper(),
                                "propagate": False}
    return config


def _seed_definitions(settings: Settings, db: object) -> None:
    """Store the project's profiles and terminology, so clients can read them over FHIR."""
    from ekd.api.app import PROJECT_DEFINITIONS, build_services
    from ekd.definitions.seed import seed
    from ekd.search import reindex

    services = build_services(settings, db)  # type: ignore[arg-type]
    index = reindex.mark_current_if_empty(services)
    report = seed(services, PROJECT_DEFINITIONS)
    console.print(f"  definitions {report.created + report.existing} JGZ profiles and "
                  f"terminology resources stored ({report.created} new)")
    for failure in report.failed:
        console.print(f"  [red]not stored[/red] {failure}")
    params = len(services.search.parameters)
    if index.current:
        console.print(f"  search      {params} search parameters, index up to date")
    else:
        console.print(f"  search      {params} search parameters; [yellow]{index.resources} "
                      "resources may be indexed for other parameters: run `ekd reindex`"
                      "[/yellow]")


def _ensure_schema(db: object) -> None:
    from ekd.store.database import Database

    assert isinstance(db, Database)
    current, head = db.current_revision(), db.head_revision()
    if current is None:
        console.print("  schema      empty database: applying migrations")
        db.upgrade()
    elif current != head:
        console.print(
            f"[red]The database schema is at {current}, this ekd needs {head}. "
            "Run `ekd db upgrade` first.[/red]"
        )
        raise typer.Exit(2)


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from ekd.store.database import Database

    db = Database(_settings(database_url).database_url)
    before = db.current_revision()
    db.upgrade(revision)
    console.print(f"{db.display_url}: {before or 'empty'} -> {db.current_revision()}")


@db_app.command("adopt")
def db_adopt(
    ura: Annotated[str, typer.Option(help="URA of the organisation that holds the data.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Give resources stored before organisation scoping (they have no owner, so no caller
    sees them) to one organisation. Shared profiles and terminology stay shared."""
    from ekd.store.database import Database
    from ekd.store.ownership import adopt

    if not (len(ura) == 8 and ura.isdigit()):
        raise typer.BadParameter("a URA is 8 digits", param_hint="--ura")
    db = Database(_settings(database_url).database_url)
    _ensure_schema(db)
    console.print(f"{adopt(db, ura)} resources now belong to organisation {ura}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Show the schema revision of the database."""
    from ekd.store.database import Database

    db = Database(_settings(database_url).database_url)
    current, head = db.current_revision(), db.head_revision()
    state = "up to date" if current == head else f"newest is {head}"
    typer.echo(f"{current or 'empty'} ({state})")


@app.command()
def version() -> None:
    """Print the ekd and FHIR versions."""
    typer.echo(f"ekd {__version__} (FHIR {FHIR_VERSION})")


def _exchange_org(settings: object) -> str | None:
    """With dossier transfer configured, the development organisation is the one whose
    certificate the server holds (it can only send for that organisation)."""
    from pathlib import Path

    from ekd.security.certificates import ura_from_pem

    cert = getattr(settings, "exchange_cert", "")
    return ura_from_pem(Path(cert).read_text()) if cert else None


def _print_transfer(settings: object) -> None:
    """Whether this server takes part in dossier transfer, and as whom."""
    org = _exchange_org(settings)
    if org is None:
        console.print("  transfer    off (set EKD_EXCHANGE_* to send and receive dossiers)")
        return
    relay = getattr(settings, "exchange_relay", "") or "[red]no relay set[/red]"
    worker = "worker on" if getattr(settings, "exchange_worker", True) else \
        "worker off (run `ekd transfer work`)"
    console.print(f"  transfer    organisation URA {org} via {relay}; {worker}")
