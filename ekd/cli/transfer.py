"""`ekd transfer`: dossier transfer (overdracht) from the command line.

Why a CLI beside `Patient/$transfer` and the worker in `ekd serve`: a GGD's yearly intake is
thousands of children at once, which an administrator starts, watches and, after a crash or
Ctrl-C, resumes from a terminal (`bulk`); deployments that keep the worker out of the web
processes run it here (`work`); and the receiver's manual-review queue needs someone to decide
(`review`). Every command acts for this server's organisation (the URA in EKD_EXCHANGE_CERT)
and is audited as client `ekd-cli` with the operating-system user.
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from ekd.interaction.base import Services
    from ekd.security.principal import Principal
    from ekd.transfer.context import Exchange

app = typer.Typer(
    help="Dossier transfer (overdracht) to another JGZ organisation: one child, a whole "
         "cohort (bulk), their status, the worker, and the manual-review queue of received "
         "dossiers. Needs the EKD_EXCHANGE_* settings (certificate, key, root, CRL, relay).",
    no_args_is_help=True)
review_app = typer.Typer(
    help="Received dossiers that wait for a person: the child's BSN is known here with "
         "another birth date or name, so it is neither merged nor imported automatically.",
    no_args_is_help=True)
app.add_typer(review_app, name="review")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True, highlight=False)

CLIENT_ID = "ekd-cli"

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", envvar="EKD_DATABASE_URL", show_default=False,
    help="SQLAlchemy URL. Default: sqlite:///./ekd.db")]
Reason = Annotated[str, typer.Option(
    "--reason", metavar="age4|move|other",
    help="Why the dossier moves: age4 (consultatiebureau to GGD at age 4), move (the family "
         "moved) or other.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DAY = {"formats": ["%Y-%m-%d"], "metavar": "YYYY-MM-DD", "show_default": False}


# -- shared --------------------------------------------------------------------------------------


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _open(ctx: typer.Context, database_url: str | None) -> tuple[Services, Exchange]:
    from ekd.api.app import build_services
    from ekd.config import Settings

    services = build_services(Settings.from_env(database_url=database_url))
    # Closed with the command (also when it fails), so no connection outlives it.
    ctx.call_on_close(services.db.dispose)
    if services.exchange is None:
        raise _fail("Dossier transfer is not configured: set EKD_EXCHANGE_CERT, "
                    "EKD_EXCHANGE_KEY, EKD_EXCHANGE_ROOT, EKD_EXCHANGE_CRL and "
                    "EKD_EXCHANGE_RELAY (see TRANSFER.md)", 2)
    return services, services.exchange


def _principal(exchange: Exchange) -> Principal:
    """The operator, acting for this server's organisation with a machine client's rights."""
    from ekd.security.principal import Principal, Role
    from ekd.security.scopes import parse_scopes

    try:
        user: str | None = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = None
    return Principal(org=exchange.ura, client_id=CLIENT_ID, role=Role.SYSTEM,
                     scopes=parse_scopes("system/*.cruds"), user_id=user)


def _log_to(ctx: typer.Context, target: Console) -> None:
    """Worker warnings (relay down, a child's step failed) above the progress bar, not
    through it; for this command only."""
    logger = logging.getLogger("ekd")
    handler = RichHandler(console=target, show_path=False, show_time=False,
                          level=logging.WARNING)
    logger.addHandler(handler)
    ctx.call_on_close(lambda: logger.removeHandler(handler))


def _json(value: object) -> None:
    # Row keys from SQLAlchemy are str subclasses, which orjson takes only with this option.
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
               .decode())


def _problem_text(problem: dict | None) -> str:
    if not problem:
        return "-"
    where = f" ({problem['element']})" if problem.get("element") else ""
    return f"{problem.get('code')}: {problem.get('message')}{where}"


# -- send ----------------------------------------------------------------------------------------


@app.command("send")
def send(
    ctx: typer.Context,
    patient_id: Annotated[str, typer.Argument(
        help="The child: its Patient id here (<id> or Patient/<id>).", metavar="PATIENT_ID",
        show_default=False)],
    to: Annotated[str, typer.Option(
        "--to", help="URA of the receiving organisation (8 digits; it must be in the "
                     "directory).", metavar="URA", show_default=False)],
    reason: Reason = "age4",
    wait: Annotated[bool, typer.Option(
        "--wait", help="Run the worker here until the transfer is final (imported, "
                       "rejected, ...) or --timeout passes.")] = False,
    timeout: Annotated[float, typer.Option(
        help="Seconds --wait waits at most.", min=1)] = 120.0,
    database_url: DatabaseUrl = None,
) -> None:
    """Send one child's dossier to another organisation.

    The objection check, the BSN 11-test, validation against the JGZ profiles, signing and
    encryption happen now, in one transaction, as with Patient/$transfer; the worker (in
    `ekd serve`, `ekd transfer work` or --wait) then hands the package to the relay.
    Exit code 0 when queued (or, with --wait, imported), 1 when stopped or refused, 3 when
    --wait timed out.
    """
    from ekd.errors import FhirError
    from ekd.transfer import sender
    from ekd.transfer.states import FINAL, State

    services, exchange = _open(ctx, database_url)
    principal = _principal(exchange)
    child = patient_id.removeprefix("Patient/")
    with services.db.write() as conn:
        patient = services.store(conn, exchange.ura).current("Patient", child)
        if patient is None or patient.deleted:
            raise _fail(f"Patient/{child} is not known in organisation {exchange.ura}")
        try:
            row = sender.start(exchange, conn, principal=principal, patient_id=child,
                               recipient=to, reason=reason)
        except FhirError as exc:
            raise _fail(exc.diagnostics, 2) from None
        sender.audit(conn, principal, row, status=202, action="E", step="transfer-request")
        row = sender.run_to_queue(services, exchange, conn, row, principal)
    out.print(f"Transfer {row['id']} of Patient/{child} to {to}: {row['state']}")
    if row["state"] != State.QUEUED:
        for problem in row.get("problems") or []:
            out.print(f"  {_problem_text(problem)}")
        raise typer.Exit(1)
    if not wait:
        out.print(f"The worker sends it; follow it with `ekd transfer status {row['id']}`.")
        return
    _log_to(ctx, console)
    final = _wait_for(services, exchange, row["id"], timeout)
    out.print(f"Transfer {row['id']}: {final['state']}")
    for problem in final.get("problems") or []:
        out.print(f"  {_problem_text(problem)}")
    if final["state"] not in FINAL:
        raise typer.Exit(3)
    if final["state"] != State.IMPORTED:
        raise typer.Exit(1)


def _wait_for(services: Services, exchange: Exchange, transfer_id: str, timeout: float
              ) -> dict:
    from ekd.transfer import status, worker
    from ekd.transfer.states import FINAL

    deadline = time.monotonic() + timeout
    with console.status("waiting for the receiver's receipts"):
        while True:
            done = worker.run_once(services, exchange)
            row = status.transfer_view(services, exchange.ura, transfer_id)
            assert row is not None
            if row["state"] in FINAL or time.monotonic() >= deadline:
                return row
            if not done:
                time.sleep(services.settings.exchange_poll)


# -- status --------------------------------------------------------------------------------------


@app.command("status")
def status_(
    ctx: typer.Context,
    transfer_id: Annotated[str | None, typer.Argument(
        help="One transfer's id: its state, receipts and problems.", metavar="TRANSFER_ID",
        show_default=False)] = None,
    job: Annotated[str | None, typer.Option(
        "--job", help="A bulk job's id: its report (children per category, and each child "
                      "that needs attention).", metavar="JOB_ID", show_default=False)] = None,
    state: Annotated[str | None, typer.Option(
        help="Without an id or job: only transfers in this state (e.g. dead-letter).",
        metavar="STATE", show_default=False)] = None,
    limit: Annotated[int, typer.Option(help="Without an id or job: at most this many, "
                                            "oldest first.", min=1)] = 50,
    as_json: Json = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Where transfers stand: one transfer, a bulk job, or an overview of transfers and jobs.

    Never shows a package or a BSN; children are named by Patient id.
    """
    from ekd.errors import NotFound
    from ekd.transfer import bulk, status

    if transfer_id and job:
        raise _fail("Give a transfer id or --job, not both", 2)
    services, exchange = _open(ctx, database_url)
    if transfer_id:
        view = status.transfer_view(services, exchange.ura, transfer_id)
        if view is None:
            raise _fail(f"No transfer {transfer_id} in organisation {exchange.ura}")
        if as_json:
            _json(view)
        else:
            _show_transfer(view)
        return
    if job:
        try:
            report = bulk.report(services, exchange.ura, job)
        except NotFound as exc:
            raise _fail(exc.diagnostics) from None
        if as_json:
            _json(report)
        else:
            _show_report(report)
        return
    overview = {"counts": status.counts(services, exchange.ura),
                "transfers": status.transfers(services, exchange.ura, state=state, limit=limit),
                "jobs": bulk.jobs(services, exchange.ura)}
    if as_json:
        _json(overview)
        return
    _show_overview(overview)


def _show_transfer(view: dict) -> None:
    table = Table(title=f"Transfer {view['id']}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    receipts = view["receipts"]
    for label, value in (
            ("state", view["state"]), ("child", f"Patient/{view['patient_id']}"),
            ("recipient", view["recipient"]), ("reason", view["reason"]),
            ("job", view["job_id"] or "-"), ("created", view["created"]),
            ("updated", view["updated"]), ("resources", view["resources"] or "-"),
            ("package hash", view["package_hash"] or "-"), ("attempts", view["attempts"]),
            ("technical receipt", "yes" if receipts["technical"] else "no"),
            ("application receipt", "yes" if receipts["application"] else "no")):
        table.add_row(label, str(value))
    for problem in view["problems"] or []:
        table.add_row("problem", _problem_text(problem))
    out.print(table)


def _show_report(report: dict) -> None:
    from ekd.transfer import bulk

    criteria = report["criteria"]
    route = criteria.get("recipient") or "by postcode (directory)"
    postcodes = (f", postcodes {criteria['postcode_from']}-{criteria['postcode_to']}"
                 if criteria.get("postcode_from") else "")
    out.print(f"Job {report['job']}: born {criteria['born_from']} to {criteria['born_to']}"
              f"{postcodes}, to {route}, reason {criteria['reason']}; created "
              f"{report['created']} by {report['requested_by']}"
              + (f"; {criteria['skipped']} child(ren) left out (already transferred or on "
                 "the way)" if criteria.get("skipped") else ""))
    table = Table(title_justify="left")
    table.add_column("category")
    table.add_column("children", justify="right")
    for name in bulk.CATEGORIES:
        table.add_row(name, str(report["counts"][name]))
    table.add_row("[bold]total[/bold]", f"[bold]{report['total']}[/bold]")
    out.print(table)
    if report["attention"]:
        listed = Table(title="Children that need attention", title_justify="left")
        for column in ("transfer", "child", "category", "state", "problem"):
            listed.add_column(column, overflow="fold")
        for item in report["attention"]:
            listed.add_row(item["transfer"], item["patient"], item["category"], item["state"],
                           _problem_text(item["problem"]))
        out.print(listed)
    out.print("Finished." if report["finished"] else
              "Not finished: children are still on their way (the worker goes on; "
              f"`ekd transfer bulk --resume {report['job']}` runs it here).")


def _show_overview(overview: dict) -> None:
    counts = overview["counts"]
    out.print("Transfers by state: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                         or "none"))
    if overview["transfers"]:
        table = Table(title_justify="left")
        for column in ("transfer", "child", "recipient", "state", "job", "updated"):
            table.add_column(column, overflow="fold")
        for t in overview["transfers"]:
            table.add_row(t["id"], f"Patient/{t['patient_id']}", t["recipient"] or "-",
                          t["state"], t["job_id"] or "-", t["updated"])
        out.print(table)
    if overview["jobs"]:
        jobs = Table(title="Bulk jobs (newest first)", title_justify="left")
        for column in ("job", "created", "by", "born", "children"):
            jobs.add_column(column, overflow="fold")
        for j in overview["jobs"]:
            c = j["criteria"]
            jobs.add_row(j["id"], j["created"], j["requested_by"],
                         f"{c['born_from']} to {c['born_to']}", str(c.get("children", "-")))
        out.print(jobs)


# -- bulk ----------------------------------------------------------------------------------------


@app.command("bulk")
def bulk_(
    ctx: typer.Context,
    born_from: Annotated[datetime | None, typer.Option(
        "--born-from", **DAY, help="Children born on or after this day.")] = None,
    born_to: Annotated[datetime | None, typer.Option(
        "--born-to", **DAY, help="... and on or before this day.")] = None,
    turning_4_from: Annotated[datetime | None, typer.Option(
        "--turning-4-from", **DAY,
        help="Instead of birth dates: children turning 4 on or after this day ...")] = None,
    turning_4_to: Annotated[datetime | None, typer.Option(
        "--turning-4-to", **DAY, help="... and on or before this day.")] = None,
    postcode_from: Annotated[str | None, typer.Option(
        help="Only children living at this postcode (4 digits) or above.",
        metavar="POSTCODE", show_default=False)] = None,
    postcode_to: Annotated[str | None, typer.Option(
        help="Only children living at this postcode (4 digits) or below.",
        metavar="POSTCODE", show_default=False)] = None,
    to: Annotated[str | None, typer.Option(
        "--to", help="URA of the one receiving organisation. Default: per child, the GGD the "
                     "directory names for the child's postcode.", metavar="URA",
        show_default=False)] = None,
    reason: Reason = "age4",
    resume: Annotated[str | None, typer.Option(
        "--resume", help="Continue this job (after a crash or Ctrl-C) instead of starting one.",
        metavar="JOB_ID", show_default=False)] = None,
    json_report: Annotated[Path | None, typer.Option(
        "--json-report", help="Also write the final report to this file (JSON).",
        metavar="FILE", show_default=False)] = None,
    receipt_wait: Annotated[float, typer.Option(
        help="Once every child is sent: seconds to wait for the receivers' receipts before "
             "reporting.", min=0)] = 30.0,
    database_url: DatabaseUrl = None,
) -> None:
    """Transfer a cohort of children: e.g. everyone turning 4 next month, to their GGD.

    One job row plus one transfer per child, created together; then the worker runs here
    (the worker in `ekd serve` helps if it runs). One child never stops the run: an objection
    is reported as refused, an invalid BSN or resource as invalid. Ctrl-C stops cleanly and
    nothing is lost: `--resume JOB_ID` continues, from any machine on the same database.
    Exit code 0 when the run ended (see the report for each child), 130 after Ctrl-C.
    """
    from ekd.errors import FhirError
    from ekd.transfer import bulk

    cohort = _cohort_dates(born_from, born_to, turning_4_from, turning_4_to)
    if resume is not None and (cohort is not None or postcode_from or postcode_to or to):
        raise _fail("--resume continues a job as it was created: give no cohort options", 2)
    if resume is None and cohort is None:
        raise _fail("Give --born-from and --born-to, --turning-4-from and --turning-4-to, "
                    "or --resume JOB_ID", 2)
    services, exchange = _open(ctx, database_url)
    if resume is not None:
        if bulk.job_row(services, exchange.ura, resume) is None:
            raise _fail(f"No transfer job {resume} in organisation {exchange.ura}")
        job = resume
        out.print(f"Resuming job {job}")
    else:
        assert cohort is not None
        try:
            job, children = bulk.create_job(
                services, exchange, principal=_principal(exchange), born_from=cohort[0],
                born_to=cohort[1], postcode_from=postcode_from, postcode_to=postcode_to,
                recipient=to, reason=reason)
        except FhirError as exc:
            raise _fail(exc.diagnostics, 2) from None
        except KeyboardInterrupt:  # the job and its children are created together or not
            raise _fail("Stopped before the job was created; nothing changed", 130) from None
        out.print(f"Job {job}: {children} child(ren), born {cohort[0]} to {cohort[1]}. "
                  f"If interrupted: ekd transfer bulk --resume {job}")
    _log_to(ctx, console)
    interrupted = False
    try:
        _drive(services, exchange, job, receipt_wait)
    except KeyboardInterrupt:
        interrupted = True
    report = bulk.report(services, exchange.ura, job)
    _show_report(report)
    if json_report is not None:
        json_report.write_bytes(orjson.dumps(
            report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        out.print(f"Report written to {json_report}")
    if interrupted:
        out.print(f"Stopped. Nothing is lost: `ekd transfer bulk --resume {job}` continues "
                  "(children in the middle of a step are taken up again within "
                  f"{_lease_minutes()} minutes).")
        raise typer.Exit(130)


def _lease_minutes() -> int:
    from ekd.transfer import claims

    return int(claims.LEASE.total_seconds() // 60)


def _cohort_dates(born_from: datetime | None, born_to: datetime | None,
                  turning_from: datetime | None, turning_to: datetime | None
                  ) -> tuple[date, date] | None:
    from ekd.transfer import bulk

    by_birth = born_from is not None or born_to is not None
    by_age = turning_from is not None or turning_to is not None
    if by_birth and by_age:
        raise _fail("Give birth dates or turning-4 dates, not both", 2)
    if by_birth:
        if born_from is None or born_to is None:
            raise _fail("Give both --born-from and --born-to", 2)
        return born_from.date(), born_to.date()
    if by_age:
        if turning_from is None or turning_to is None:
            raise _fail("Give both --turning-4-from and --turning-4-to", 2)
        return (bulk.born_for_age(turning_from.date(), 4),
                bulk.born_for_age(turning_to.date(), 4))
    return None


def _summary(counts: dict[str, int]) -> str:
    from ekd.transfer import bulk

    return " · ".join(f"{name} {counts[name]}" for name in bulk.CATEGORIES if counts[name]) \
        or "nothing yet"


def _drive(services: Services, exchange: Exchange, job: str, receipt_wait: float) -> None:
    """The worker loop with a progress bar over the job's children, until none is pending
    (and the receipts for the sent ones came, or `receipt_wait` passed)."""
    from ekd.transfer import bulk

    counts = bulk.counts(services, exchange.ura, job)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(_summary(counts), total=counts["total"])

        def show(c: dict[str, int]) -> None:
            bar.update(task, completed=c["total"] - c["pending"], description=_summary(c))

        show(counts)
        run_until_done(services, exchange, job, receipt_wait=receipt_wait, progress=show)


def run_until_done(services: Services, exchange: Exchange, job: str, *,
                   receipt_wait: float = 30.0,
                   progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, int]:
    """Run the worker until no child of the job is pending; the last counts. Children held
    back after an unexpected error do not keep it waiting: the worker retries them later."""
    from ekd.transfer import bulk, worker

    poll = services.settings.exchange_poll
    receipts_by: float | None = None
    while True:
        done = worker.run_once(services, exchange)
        counts = bulk.counts(services, exchange.ura, job)
        if progress is not None:
            progress(counts)
        if counts["pending"] == 0 or (
                not done and counts["pending"] == bulk.stalled(services, exchange.ura, job)):
            if not (counts["sent"] or counts["accepted"]):
                return counts
            receipts_by = receipts_by or time.monotonic() + receipt_wait
            if time.monotonic() >= receipts_by:
                return counts
        if not done:
            time.sleep(poll)


# -- work ----------------------------------------------------------------------------------------


@app.command("work")
def work(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option(
        "--once", help="Work until nothing is due, then exit (for cron or a test).")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the transfer worker: send the outbox, process received dossiers and receipts, take
    bulk children forward.

    For deployments that run it apart from the web processes (EKD_EXCHANGE_WORKER=false for
    `ekd serve`). Several workers may run at once: work is claimed with leases. Ctrl-C stops.
    """
    from ekd.transfer import worker

    services, exchange = _open(ctx, database_url)
    _log_to(ctx, console)
    if once:
        out.print(f"{worker.run_until_idle(services, exchange)} item(s) handled")
        return
    from ekd.api.app import settle_heap

    settle_heap()
    runner = worker.Worker(services, exchange)
    runner.start()
    console.print(f"Transfer worker running for organisation {exchange.ura}; Ctrl-C stops.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        runner.stop()
        console.print("Stopped.")


# -- review --------------------------------------------------------------------------------------


@review_app.command("list")
def review_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.", min=1)] = 100,
    as_json: Json = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Received dossiers waiting for a decision, with why each one waits."""
    from ekd.transfer import status

    services, exchange = _open(ctx, database_url)
    rows = status.received(services, exchange.ura, state="review", limit=limit)
    if as_json:
        _json(rows)
        return
    if not rows:
        out.print("No received dossier waits for review.")
        return
    table = Table(title="Waiting for review", title_justify="left")
    for column in ("pk", "sender", "transfer", "received", "why"):
        table.add_column(column, overflow="fold")
    for r in rows:
        first = (r["problems"] or [None])[0]
        table.add_row(str(r["pk"]), r["sender"], r["transfer_id"], r["received"],
                      str(first.get("message")) if isinstance(first, dict) else "-")
    out.print(table)
    out.print("Decide with `ekd transfer review resolve PK --new` or `--merge PATIENT_ID`.")


@review_app.command("resolve")
def review_resolve(
    ctx: typer.Context,
    pk: Annotated[int, typer.Argument(help="The received dossier (pk from `review list`).",
                                      metavar="PK", show_default=False)],
    new: Annotated[bool, typer.Option(
        "--new", help="Import it as a new child (it is not a child known here).")] = False,
    merge: Annotated[str | None, typer.Option(
        "--merge", help="Import it into this child known here: its Patient id.",
        metavar="PATIENT_ID", show_default=False)] = None,
    reject: Annotated[bool, typer.Option(
        "--reject", help="Import nothing; the sender is told it was rejected.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Decide on a received dossier: import it as a new child or into a known one, or reject it.

    The package is checked again (signature, profiles, objection) before anything is stored,
    and the sender gets the application receipt. Exit code 1 when it ends rejected.
    """
    from ekd.errors import FhirError
    from ekd.transfer import review

    if sum((new, merge is not None, reject)) != 1:
        raise _fail("Give exactly one of --new, --merge PATIENT_ID and --reject", 2)
    services, exchange = _open(ctx, database_url)
    decision = "new" if new else "reject" if reject else f"Patient/{merge.removeprefix('Patient/')}"  # type: ignore[union-attr]
    try:
        result, child = review.resolve(services, exchange, pk, decision, _principal(exchange))
    except FhirError as exc:
        raise _fail(exc.diagnostics) from None
    out.print(f"Received dossier {pk}: {result}" + (f" as Patient/{child}" if child else ""))
    if result != "imported":
        raise typer.Exit(1)
