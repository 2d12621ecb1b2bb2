"""`ekd`: run the server and manage its database."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ekd import FHIR_VERSION, __version__
from ekd.cli.bds import app as bds_app
from ekd.cli.conformance import app as conformance_app
from ekd.cli.demo import demo_data as demo_data_command
from ekd.cli.reindex import reindex as reindex_command
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
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Start the FHIR server (migrates an empty database first)."""
    import os

    import uvicorn

    from ekd.store.database import Database

    settings = _settings(database_url, host=host, port=port)
    db = Database(settings.database_url)
    console.print(f"[bold]ekd {__version__}[/bold] FHIR R{FHIR_VERSION}")
    console.print(f"  database    {db.display_url}")
    _ensure_schema(db)
    _seed_definitions(settings, db)
    db.dispose()
    # Worker processes build their app from the environment (ekd.api.app:app_from_env).
    os.environ["EKD_DATABASE_URL"] = settings.database_url
    os.environ["EKD_WORKERS"] = str(workers)
    base = settings.base_url or f"http://{settings.host}:{settings.port}/fhir"
    console.print(f"  FHIR base   {base}")
    console.print(f"  OpenAPI     http://{settings.host}:{settings.port}/docs")
    if workers > 1:
        console.print(f"  workers     {workers}")
    uvicorn.run("ekd.api.app:app_from_env", factory=True, host=settings.host,
                port=settings.port, workers=workers, log_level=log_level, access_log=False)


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
