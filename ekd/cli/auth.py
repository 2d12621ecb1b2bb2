"""`ekd client …`, `ekd keys …`, `ekd token create`: who may call the server, and with what.

Messages go to stderr; stdout carries only what scripts capture (a token, a kid, a listing),
so `TOKEN=$(ekd token create --role jeugdarts)` works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from ekd.config import Settings

if TYPE_CHECKING:
    from ekd.store.database import Database

console = Console(stderr=True, soft_wrap=True)

client_app = typer.Typer(help="Registered clients (organisation systems) that may get tokens.",
                         no_args_is_help=True)
keys_app = typer.Typer(help="ekd's own token-signing keys (EKD_KEY_DIR).", no_args_is_help=True)
token_app = typer.Typer(help="Access tokens for testing and local development.",
                        no_args_is_help=True)

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", envvar="EKD_DATABASE_URL", show_default=False,
    help="SQLAlchemy URL. Default: sqlite:///./ekd.db")]
KeyDir = Annotated[str | None, typer.Option(
    "--key-dir", envvar="EKD_KEY_DIR", show_default=False,
    help="Folder of the signing keys. Default: ./ekd-keys")]


def _settings(database_url: str | None = None, key_dir: str | None = None) -> Settings:
    return Settings.from_env(database_url=database_url, key_dir=key_dir)


def _database(settings: Settings) -> Database:
    from ekd.store.database import Database

    db = Database(settings.database_url)
    current, head = db.current_revision(), db.head_revision()
    if current is None:
        console.print(f"{db.display_url}: empty database, applying migrations")
        db.upgrade()
    elif current != head:
        console.print(f"[red]The database schema is at {current}, this ekd needs {head}. "
                      "Run `ekd db upgrade` first.[/red]")
        raise typer.Exit(2)
    return db


# -- clients ---------------------------------------------------------------------------------


@client_app.command("add")
def client_add(
    client_id: Annotated[str, typer.Option("--client-id", help="The client's id (the `iss` "
                                           "and `sub` of its client assertions).")],
    ura: Annotated[str, typer.Option("--ura", help="URA number of the organisation the client "
                                     "acts for. Every token of the client carries it.")],
    name: Annotated[str, typer.Option("--name", help="Display name (organisation/system).")],
    scope: Annotated[str, typer.Option("--scope", help='SMART scopes it may be granted, e.g. '
                                       '"system/*.rs user/Observation.cruds".')],
    roles: Annotated[str, typer.Option("--roles", help="Comma-separated roles its users may "
                                       "act in: jeugdarts, jeugdverpleegkundige, "
                                       "doktersassistent, administratief-medewerker, "
                                       "beheerder, system.")],
    jwks: Annotated[Path | None, typer.Option(
        "--jwks", exists=True, dir_okay=False, readable=True,
        help="JSON file with the client's PUBLIC keys (a JWKS; each key with a kid). Without "
             "it the client can only use mutual TLS.")] = None,
    mtls: Annotated[bool, typer.Option("--mtls", help="The organisation's certificate "
                                       "(mutual TLS) authenticates as this client.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Register a client of an organisation."""
    from ekd.security.clients import ClientError, ClientRegistry

    key_set: dict | None = None
    if jwks is not None:
        try:
            key_set = json.loads(jwks.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            console.print(f"[red]{jwks} is not a JSON file: {type(exc).__name__}[/red]")
            raise typer.Exit(1) from None
    if key_set is None and not mtls:
        console.print("[red]Give --jwks (client assertions) or --mtls (certificate): without "
                      "either the client cannot authenticate.[/red]")
        raise typer.Exit(1)
    registry = ClientRegistry(_database(_settings(database_url)))
    try:
        client = registry.register(client_id, ura, name, key_set, scope, roles.split(","),
                                   mtls=mtls)
    except ClientError as exc:
        console.print(f"[red]Not registered: {exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"Registered {client.client_id} for organisation {client.org}: roles "
                  f"{' '.join(client.roles)}; scope {client.scope}")


@client_app.command("list")
def client_list(database_url: DatabaseUrl = None) -> None:
    """Show the registered clients (tab-separated: id, URA, state, roles, scope, name)."""
    from ekd.security.clients import ClientRegistry

    clients = ClientRegistry(_database(_settings(database_url))).list()
    if not clients:
        console.print("No clients registered.")
    for c in clients:
        state = "disabled" if c.disabled else "mtls" if c.mtls else "enabled"
        typer.echo("\t".join([c.client_id, c.org, state, ",".join(c.roles), c.scope, c.name]))


@client_app.command("disable")
def client_disable(
    client_id: Annotated[str, typer.Argument(help="The client to lock out.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Lock a client out: no new tokens, and its current tokens stop working (within seconds
    on running servers)."""
    from ekd.security.clients import ClientRegistry

    if not ClientRegistry(_database(_settings(database_url))).disable(client_id):
        console.print(f"[red]No client {client_id!r}.[/red]")
        raise typer.Exit(1)
    console.print(f"Disabled {client_id}.")


# -- keys ------------------------------------------------------------------------------------


@keys_app.command("rotate")
def keys_rotate(key_dir: KeyDir = None) -> None:
    """Add a new signing key (prints its kid). New tokens are signed with it once servers have
    restarted; tokens signed with older keys keep verifying while their files stay. Remove an
    old key file only after the token lifetime has passed."""
    from ekd.security.keys import KeyRing, KeyRingError

    settings = _settings(key_dir=key_dir)
    try:
        ring = KeyRing.load(settings.key_dir)
        kid = ring.rotate()
    except (KeyRingError, OSError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"New signing key in {ring.directory} ({len(ring)} keys in all)")
    typer.echo(kid)


@keys_app.command("list")
def keys_list(key_dir: KeyDir = None) -> None:
    """Show the keys (tab-separated: kid, file, whether it signs). Oldest first."""
    from ekd.security.keys import KeyRing, KeyRingError

    settings = _settings(key_dir=key_dir)
    try:
        ring = KeyRing.load(settings.key_dir)
    except KeyRingError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if not ring:
        console.print(f"No keys in {settings.key_dir} (`ekd keys rotate` makes one).")
        return
    newest = ring.signing_key.kid
    for k in ring.keys:
        typer.echo("\t".join([k.kid, k.name, "signs" if k.kid == newest else "verifies"]))


# -- tokens ----------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option("--role", help="jeugdarts, jeugdverpleegkundige, "
                                      "doktersassistent, administratief-medewerker, beheerder "
                                      "or system.")] = "jeugdarts",
    client_id: Annotated[str | None, typer.Option(
        "--client-id", show_default=False,
        help="A registered client. Default (development mode): the local development client "
             "of --ura, registered on first use.")] = None,
    ura: Annotated[str | None, typer.Option(
        "--ura", show_default=False,
        help="Organisation (URA). Development mode: a development client for it is registered "
             "on first use. Default: the local organisation 90000001.")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", show_default=False, help="UZI number or local id of the user (required for "
        "roles other than system; development mode defaults to a local user).")] = None,
    user_name: Annotated[str | None, typer.Option("--user-name", show_default=False,
                                                  help="Display name of the user.")] = None,
    on_behalf_of: Annotated[str | None, typer.Option(
        "--on-behalf-of", show_default=False, help="Id of the user on whose behalf the user "
        "acts.")] = None,
    on_behalf_of_name: Annotated[str | None, typer.Option(
        "--on-behalf-of-name", show_default=False, help="Display name of that user.")] = None,
    scope: Annotated[str | None, typer.Option(
        "--scope", show_default=False, help="SMART scopes (narrowed to what the client may "
        "have). Default: all the client may have.")] = None,
    lifetime: Annotated[int | None, typer.Option(
        "--lifetime", min=1, show_default=False, help="Seconds. Default: EKD_TOKEN_LIFETIME.")
    ] = None,
    audience: Annotated[str | None, typer.Option(
        "--audience", show_default=False, help="FHIR base URL the token is for. Default: "
        "EKD_BASE_URL, else http://<EKD_HOST>:<EKD_PORT>/fhir.")] = None,
    database_url: DatabaseUrl = None,
    key_dir: KeyDir = None,
) -> None:
    """Print an access token (and nothing else on stdout).

    Signed with the server's own key, so only someone with access to the key folder can do
    this; it still respects the client's registered organisation, roles and scopes.
    """
    from ekd.security.principal import Role
    from ekd.security.service import (
        DEV_ORG,
        DEV_USER_ID,
        DEV_USER_NAME,
        Security,
        SecurityConfigError,
        default_issuer,
    )
    from ekd.security.tokens import TokenError

    settings = _settings(database_url, key_dir)
    development = settings.mode != "production"
    try:
        security = Security.build(settings, _database(settings), issuer=default_issuer(settings))
        if client_id is None:
            if not development:
                console.print("[red]--client-id is required in production mode.[/red]")
                raise typer.Exit(1)
            client_id = security.dev_client(ura or DEV_ORG).client_id
        client = security.clients.get(client_id)
        if client is not None and ura is not None and client.org != ura:
            console.print(f"[red]{client_id} belongs to organisation {client.org}, not "
                          f"{ura}.[/red]")
            raise typer.Exit(1)
        if user is None and development and role != Role.SYSTEM.value:
            user, user_name = DEV_USER_ID, user_name or DEV_USER_NAME
        token = security.tokens.mint(
            client_id, role=role, audience=audience or _audience(settings), user_id=user,
            user_name=user_name, on_behalf_of=on_behalf_of,
            on_behalf_of_name=on_behalf_of_name, scope=scope, lifetime=lifetime)
    except SecurityConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except TokenError as exc:
        console.print(f"[red]No token: {exc.description}[/red]")
        raise typer.Exit(1) from None
    typer.echo(token)


def _audience(settings: Settings) -> str:
    return settings.base_url.rstrip("/") or f"http://{settings.host}:{settings.port}/fhir"
