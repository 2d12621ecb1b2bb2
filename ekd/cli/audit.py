"""`ekd audit`: check the audit log's hash chains and show who accessed a dossier.

Both commands read the protected audit store directly (run them as the database owner, not
over FHIR). Neither prints a BSN: the report names records by pk and AuditEvent id, and the
overview shows the AuditEvent's agents, which never hold one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from ekd.store.database import Database

app = typer.Typer(help="Audit log (NEN 7513): verify the hash chains, show dossier access.",
                  no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", envvar="EKD_DATABASE_URL", show_default=False,
    help="SQLAlchemy URL. Default: sqlite:///./ekd.db")]
Org = Annotated[str | None, typer.Option(
    "--org", help="Only this organisation (URA number).", show_default=False)]

_ACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
_OUTCOMES = {"0": "success", "4": "minor failure", "8": "serious failure",
             "12": "major failure"}


def _database(database_url: str | None) -> Database:
    from ekd.config import Settings
    from ekd.store.database import Database

    return Database(Settings.from_env(database_url=database_url).database_url)


@app.command("verify")
def verify(database_url: DatabaseUrl = None, org: Org = None) -> None:
    """Check every organisation's audit chain: edited, removed or reordered records.

    Exit code 0 when all chains are intact, 1 when a problem was found. Note the head hash of
    each organisation somewhere outside the database: a later run showing a different head
    for the same records means the chain was rewritten.
    """
    from ekd.audit import log

    db = _database(database_url)
    try:
        with db.engine.connect() as conn, conn.begin():
            total = log.count(conn, org)
        with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("verify", total=total)
            report = log.verify_database(
                db, org, progress=lambda done: bar.update(task, completed=done))
    finally:
        db.dispose()
    out = Console(soft_wrap=True, highlight=False)
    if not report.orgs:
        out.print(f"{db.display_url}: no audit records" + (f" for {org}" if org else ""))
        return
    out.print(f"{db.display_url}: {report.checked} audit records of {len(report.orgs)} "
              "organisation(s)")
    for name, r in report.orgs.items():
        if r.ok:
            out.print(f"  {name}: {r.checked} records, chain intact, head {r.head_hash}")
            continue
        out.print(f"  {name}: {r.checked} records, [red]{r.problem_count} problem(s)[/red]")
        for p in r.problems:
            where = "head" if p.pk is None else f"record pk {p.pk} (AuditEvent/{p.id})"
            out.print(f"    {where}: {p.kind}: {p.detail}")
        if r.problem_count > len(r.problems):
            out.print(f"    ... and {r.problem_count - len(r.problems)} more")
    if report.ok:
        out.print("[green]All audit chains intact.[/green]")
        return
    out.print("[red]The audit log was tampered with or damaged.[/red]")
    raise typer.Exit(1)


@app.command("show")
def show(
    patient: Annotated[str, typer.Option("--patient", help="Patient/<id> (or <id>).")],
    database_url: DatabaseUrl = None,
    org: Org = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 200,
) -> None:
    """Who accessed a patient's dossier: when, which user in which role, what they did."""
    from ekd.audit.search import AuditSearch
    from ekd.errors import InvalidRequest

    db = _database(database_url)
    try:
        with db.read() as conn:
            rows = AuditSearch().access_overview(conn, patient, org, limit)
    except InvalidRequest as exc:
        console.print(f"[red]{exc.diagnostics}[/red]")
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    out = Console(soft_wrap=True, highlight=False)
    if not rows:
        out.print(f"No audit records for {patient}" + (f" in {org}" if org else "") + ".")
        return
    table = Table(title=f"Access to {patient}", title_justify="left")
    for column in ("When (UTC)", "Organisation", "User", "Role", "On behalf of", "Action",
                   "Interaction", "Outcome", "Client"):
        table.add_column(column)
    for a in rows:
        user = f"{a.user_name} ({a.user_id})" if a.user_name else (a.user_id or "-")
        table.add_row(a.recorded.strftime("%Y-%m-%d %H:%M:%S"), a.org, user, a.role or "-",
                      a.on_behalf_of or "-", _ACTIONS.get(a.action, a.action), a.subtype,
                      _OUTCOMES.get(a.outcome, a.outcome), a.client_id)
    out.print(table)
