"""`ekd reindex`: rebuild search index rows after search parameters changed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)


def reindex(
    database_url: Annotated[str | None, typer.Option(
        "--database-url", envvar="EKD_DATABASE_URL", show_default=False,
        help="SQLAlchemy URL. Default: sqlite:///./ekd.db")] = None,
    resource_type: Annotated[list[str] | None, typer.Option(
        "--type", "-t", help="Only resources of this type (repeatable).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Resources per transaction.")] = 500,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Start over instead of resuming an interrupted run.")] = False,
) -> None:
    """Rebuild the search index for the search parameters in force.

    Needed after a SearchParameter was added or changed, and after an upgrade from before
    search indexing: until then, older resources are not found by the new parameters.

    Safe while the server runs. An interrupted run (Ctrl-C, crash) resumes where it stopped.
    """
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.search import reindex as job

    settings = Settings.from_env(database_url=database_url)
    services = build_services(settings)
    state = job.status(services)
    console.print(f"{services.db.display_url}: {state.resources} resources, "
                  f"{len(services.search.parameters)} search parameters "
                  f"(signature {state.signature})")
    with Progress(TextColumn("reindexing"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("reindex", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = job.run(services, types=resource_type or None, batch=batch,
                             restart=restart, progress=progress)
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted.[/yellow] Run `ekd reindex` again to resume.")
            raise typer.Exit(130) from None
    if report.already_done:
        console.print("Already indexed for these search parameters (use --restart to redo).")
    else:
        resumed = f", resumed after pk {report.resumed_after}" if report.resumed_after else ""
        console.print(f"Reindexed {report.reindexed} of {report.total} resources{resumed}.")
