"""Bulk transfer runs: a cohort of children (every child turning 4 next month) sent as one job.

A job is one `transfer_job` row plus one `transfer` row per child, all written in the one
transaction that selects the cohort: a job exists with all its children or not at all, and
from then on the rows themselves are the run's whole state. The worker (`prepare_due`, in
every `ekd serve` and in `ekd transfer bulk`) claims a few children at a time with a lease and
takes each through `sender.advance`, one transaction per step, so a crash or Ctrl-C loses at
most the step in flight and a resumed run (any process, any time) simply claims what is left.

One child never stops the run: a child that cannot be sent ends `invalid` or `cancelled` with
its reason (the state machine's own stops), and an unexpected error in one child's step is
logged by type, noted on the row and retried later with a growing lease, never in a hot loop;
after `MAX_STEP_FAILURES` it ends `invalid` so the job can finish.

`report` counts a job's children per category (the TRANSFER.md bulk report: sent, refused,
invalid, retrying, ...) and lists every child that needs someone's attention.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from urllib.parse import urlencode

from sqlalchemy import Connection, func, insert, null, select, update

from ekd.audit import log
from ekd.audit.record import AuditRecord
from ekd.errors import InvalidRequest, NotFound
from ekd.exchange.directory import DirectoryError, DirectoryView, postcode_number
from ekd.interaction.base import Services
from ekd.security.principal import Principal
from ekd.store.resources import ResourceStore, as_utc, instant, now
from ekd.store.schema import transfer, transfer_job
from ekd.transfer import claims, sender
from ekd.transfer.context import Exchange
from ekd.transfer.states import BEFORE_DISPATCH, IllegalTransition, State

_log = logging.getLogger("ekd.transfer")

#: The states a bulk child is prepared through (`sender.advance`) before the outbox has it.
PREPARING = (State.PREPARED, State.CONSENT_CHECKED, State.PACKAGED)
#: A child with a transfer in one of these is already on its way or delivered: a cohort run
#: leaves it out rather than send the dossier a second time (a single `send` still can).
ALREADY_TRANSFERRING = tuple(sorted(
    BEFORE_DISPATCH | {State.SENT, State.ACCEPTED, State.IMPORTED}))
#: Patients read per page while selecting a cohort: memory stays flat for any cohort size.
PAGE = 500
#: An unexpected error in a child's step: retried after one lease (EKD_EXCHANGE_LEASE), two,
#: four, ... up to this.
MAX_RETRY_DELAY = timedelta(hours=1)
#: ... and after this many such errors the child ends `invalid` (the job can finish).
MAX_STEP_FAILURES = 5
INTERNAL_ERROR = "internal-error"

#: Report categories, in the order a report shows them. `refused` is a child cancelled
#: because of an objection; any other cancellation (the recipient left the directory) is
#: `failed`, like a dead letter or a rejection by the receiver.
CATEGORIES = ("pending", "sent", "accepted", "imported", "refused", "invalid", "retrying",
              "failed")
_CATEGORY = {
    State.PREPARED: "pending", State.CONSENT_CHECKED: "pending", State.PACKAGED: "pending",
    State.QUEUED: "pending", State.SENT: "sent", State.ACCEPTED: "accepted",
    State.IMPORTED: "imported", State.INVALID: "invalid", State.FAILED_RETRYABLE: "retrying",
    State.DEAD_LETTER: "failed", State.REJECTED: "failed", State.CANCELLED: "failed",
}
#: Children that need someone's attention; the report lists each of them.
ATTENTION = frozenset({"refused", "invalid", "retrying", "failed"})
_LISTED_STATES = tuple(s.value for s, c in _CATEGORY.items() if c in ATTENTION)


# -- creating a job ------------------------------------------------------------------------------


def create_job(services: Services, exchange: Exchange, *, principal: Principal, born_from: date,
               born_to: date, postcode_from: str | None = None, postcode_to: str | None = None,
               recipient: str | None = None, reason: str = "age4") -> tuple[str, int]:
    """A job over this organisation's children born in [born_from, born_to] (and, if given,
    living in the postcode range): (job id, number of children in it).

    Each child goes to `recipient`, or without one to the GGD the directory names for the
    child's postcode; a child no organisation serves is in the job as `invalid`
    (`no-recipient`), so the report shows it instead of the cohort silently shrinking.
    """
    sender.check_request(exchange, principal, reason)
    if born_from > born_to:
        raise InvalidRequest("born_from is after born_to", expression="born_from")
    low = _postcode_bound(postcode_from, "postcode_from", 1000)
    high = _postcode_bound(postcode_to, "postcode_to", 9999)
    if low > high:
        raise InvalidRequest("postcode_from is above postcode_to", expression="postcode_from")
    directory = exchange.directory()
    if recipient is not None:
        sender.check_recipient(exchange, recipient)
    filtered = postcode_from is not None or postcode_to is not None
    job_id = str(uuid.uuid4())
    requested_by = principal.user_id or principal.client_id
    criteria: dict[str, object] = {
        "born_from": born_from.isoformat(), "born_to": born_to.isoformat(),
        "postcode_from": low if filtered else None, "postcode_to": high if filtered else None,
        "recipient": recipient, "reason": reason}
    children = skipped = 0
    with services.db.write() as conn:
        store = services.store(conn, exchange.ura)
        for page in _cohort(services, store, born_from, born_to):
            chosen = []
            for patient in page:
                postcode = postcode_of(patient)
                if filtered and not _in_range(postcode, low, high):
                    continue
                chosen.append((patient, postcode))
            busy = _already_transferring(conn, exchange.ura, [p["id"] for p, _ in chosen])
            rows, stopped = [], []
            for patient, postcode in chosen:
                if patient["id"] in busy:
                    skipped += 1
                    continue
                target, why = (recipient, None) if recipient is not None \
                    else _route(exchange, directory, postcode)
                row = sender.new_row(exchange, patient_id=patient["id"],
                                     recipient=target or "", reason=reason, job_id=job_id,
                                     requested_by=requested_by)
                if why is None:
                    rows.append(row)
                else:
                    problem = sender.Problem("no-recipient", why, "Patient.address.postalCode")
                    stopped.append({**row, "state": State.INVALID.value,
                                    "problems": [problem.as_json()]})
            if rows:
                conn.execute(insert(transfer), rows)
            if stopped:
                conn.execute(insert(transfer), stopped)
                for row in stopped:
                    sender.audit(conn, principal, row, status=422, action="E",
                                 step="transfer-invalid", description=row["problems"][0]["message"])
            children += len(rows) + len(stopped)
        criteria.update(children=children, skipped=skipped)
        conn.execute(insert(transfer_job).values(
            id=job_id, org=exchange.ura, criteria=criteria, created=now(),
            requested_by=requested_by))
        exchange.work_queued(conn)
        log.append(conn, [AuditRecord(
            interaction="transfer", action="E", status=202, principal=principal,
            recorded=now(), resource_type="Patient", operation="transfer-bulk",
            query=urlencode({"job": job_id, **{k: v for k, v in criteria.items()
                                               if v is not None}}),
            extra={"job": job_id, "children": str(children)})])
    return job_id, children


def born_for_age(day: date, years: int) -> date:
    """The birth date of a child that turns `years` old on `day` (29 February: the 28th)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def postcode_of(patient: dict) -> str | None:
    """The postcode a child is routed by: its home address, else the first address with one
    (an address marked `old` never routes)."""
    addresses = [a for a in patient.get("address") or () if isinstance(a, dict)
                 and isinstance(a.get("postalCode"), str) and a.get("use") != "old"]
    home = [a for a in addresses if a.get("use") == "home"]
    chosen = (home or addresses or [None])[0]
    return chosen["postalCode"] if chosen is not None else None


def _cohort(services: Services, store: ResourceStore, born_from: date, born_to: date
            ) -> Iterator[list[dict]]:
    """The organisation's Patients born in the range, a page at a time (keyset paging: each
    child once, however many there are)."""
    query = services.search.parse("Patient", [
        ("birthdate", f"ge{born_from.isoformat()}"), ("birthdate", f"le{born_to.isoformat()}"),
        ("_total", "none")], strict=True)
    while True:
        page = services.search.page(store, query, PAGE)
        yield [s.content for s in page.matches if s.content is not None]
        if page.next is None:
            return
        query.cursor = page.next


def _postcode_bound(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        return postcode_number(value)
    except ValueError:
        raise InvalidRequest(f"{name} is not a Dutch postcode (4 digits)",
                             expression=name) from None


def _in_range(postcode: str | None, low: int, high: int) -> bool:
    try:
        return postcode is not None and low <= postcode_number(postcode) <= high
    except ValueError:
        return False


def _route(exchange: Exchange, directory: DirectoryView, postcode: str | None
           ) -> tuple[str | None, str | None]:
    """(recipient, None) or (None, why no organisation can be chosen)."""
    if postcode is None:
        return None, "The child has no postcode to route by"
    try:
        entry = directory.for_postcode(postcode)
    except ValueError:
        return None, "The child's postcode is not a Dutch postcode"
    except DirectoryError as exc:
        return None, str(exc)
    if entry is None:
        return None, f"No organisation in the directory serves postcode {postcode[:4]}"
    if entry.ura == exchange.ura:
        return None, f"Postcode {postcode[:4]} is served by this organisation itself"
    return entry.ura, None


def _already_transferring(conn: Connection, org: str, patient_ids: list[str]) -> set[str]:
    if not patient_ids:
        return set()
    return set(conn.execute(select(transfer.c.patient_id).where(
        transfer.c.org == org, transfer.c.patient_id.in_(patient_ids),
        transfer.c.state.in_([s.value for s in ALREADY_TRANSFERRING]))).scalars())


# -- running it ----------------------------------------------------------------------------------


def prepare_due(services: Services, exchange: Exchange, *, limit: int = 10) -> int:
    """Take up to `limit` bulk children one or more steps towards the outbox; how many."""
    rows = claims.claim(services.db, transfer, "id", [
        transfer.c.org == exchange.ura, transfer.c.job_id.is_not(None),
        transfer.c.state.in_([s.value for s in PREPARING])], limit=limit, order_by="created",
        lease=claims.lease_of(services.settings))
    for row in rows:
        try:
            sender.advance(services, exchange, row["id"])
        except IllegalTransition:
            # Another worker moved it on after our lease ran out: its work, not a failure.
            _log.info("bulk transfer %s moved on concurrently", row["id"])
        except Exception as exc:  # one child never stops the run; the type only (no data)
            _log.error("bulk transfer %s: step failed: %s", row["id"], type(exc).__name__)
            try:
                _step_failed(services, row["id"], type(exc).__name__)
            except Exception as again:  # the lease still keeps it from a hot loop
                _log.error("bulk transfer %s: failure not recorded: %s", row["id"],
                           type(again).__name__)
        else:
            if _failures(row):
                _clear_failure(services, row["id"])
    return len(rows)


def _failures(row: dict) -> int:
    problems = row.get("problems") or []
    first = problems[0] if problems and isinstance(problems[0], dict) else {}
    return int(first.get("attempts", 0)) if first.get("code") == INTERNAL_ERROR else 0


def _step_failed(services: Services, transfer_id: str, error: str) -> None:
    """Note the failure on the row and keep it leased for a growing delay, so it is tried
    again later rather than at once; after MAX_STEP_FAILURES it ends `invalid` if it may."""
    with services.db.write() as conn:
        row = sender.load(conn, transfer_id)
        if row is None or State(row["state"]) not in PREPARING:
            return
        failures = _failures(row) + 1
        problem = {"code": INTERNAL_ERROR, "attempts": failures,
                   "message": f"Preparing the transfer failed ({error})"}
        # A packaged child may only be queued or cancelled: it is retried (capped) instead.
        if failures >= MAX_STEP_FAILURES and row["state"] in (State.PREPARED,
                                                              State.CONSENT_CHECKED):
            problem["message"] += f"; gave up after {failures} attempts"
            moved = sender.move(conn, row, State.INVALID, problems=[problem])
            sender.audit(conn, sender.worker_principal(row["org"]), moved, status=500,
                         action="E", step="transfer-invalid", description=problem["message"])
            return
        delay = min(claims.lease_of(services.settings) * 2 ** (failures - 1), MAX_RETRY_DELAY)
        conn.execute(update(transfer).where(
            transfer.c.id == transfer_id, transfer.c.state == row["state"]).values(
            problems=[problem], claimed_until=now() + delay))


def _clear_failure(services: Services, transfer_id: str) -> None:
    """A child that went through after an earlier failure: the stale note goes."""
    with services.db.write() as conn:
        row = sender.load(conn, transfer_id)
        if row is not None and _failures(row):
            conn.execute(update(transfer).where(transfer.c.id == transfer_id)
                         .values(problems=null()))


def stalled(services: Services, org: str, job_id: str) -> int:
    """Children of the job held back after an unexpected error, until their lease runs out:
    a run that has nothing else left to do can stop instead of waiting for them."""
    with services.db.read() as conn:
        rows = conn.execute(select(transfer.c.problems).where(
            transfer.c.org == org, transfer.c.job_id == job_id,
            transfer.c.state.in_([s.value for s in PREPARING]),
            transfer.c.claimed_until > now(), transfer.c.problems.is_not(None)))
        return sum(1 for (problems,) in rows if _failures({"problems": problems}))


# -- reporting -----------------------------------------------------------------------------------


def job_row(services: Services, org: str, job_id: str) -> dict | None:
    with services.db.read() as conn:
        row = conn.execute(select(transfer_job).where(
            transfer_job.c.org == org, transfer_job.c.id == job_id)).mappings().first()
    return dict(row) if row is not None else None


def jobs(services: Services, org: str, *, limit: int = 20) -> list[dict]:
    """The newest jobs first, with their criteria (what `status` lists)."""
    with services.db.read() as conn:
        rows = conn.execute(select(transfer_job).where(transfer_job.c.org == org)
                            .order_by(transfer_job.c.created.desc()).limit(limit)).mappings()
        return [{"id": r["id"], "created": instant(as_utc(r["created"])),
                 "requested_by": r["requested_by"], "criteria": r["criteria"]} for r in rows]


def counts(services: Services, org: str, job_id: str) -> dict[str, int]:
    """Children per category (cheap: one grouped count plus the few cancelled rows); what a
    progress display polls."""
    with services.db.read() as conn:
        return _counts(conn, org, job_id)


def _counts(conn: Connection, org: str, job_id: str) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for state, n in conn.execute(select(transfer.c.state, func.count()).where(
            transfer.c.org == org, transfer.c.job_id == job_id).group_by(transfer.c.state)):
        if state != State.CANCELLED:
            out[_CATEGORY[State(state)]] += int(n)
    for (problems,) in conn.execute(select(transfer.c.problems).where(
            transfer.c.org == org, transfer.c.job_id == job_id,
            transfer.c.state == State.CANCELLED.value)):
        out[category(State.CANCELLED.value, problems)] += 1
    out["total"] = sum(out[c] for c in CATEGORIES)
    return out


def category(state: str, problems: list | None) -> str:
    if state == State.CANCELLED and _first(problems).get("code") == "objection":
        return "refused"
    return _CATEGORY[State(state)]


def _first(problems: list | None) -> dict:
    return problems[0] if problems and isinstance(problems[0], dict) else {}


def report(services: Services, org: str, job_id: str) -> dict:
    """The job's criteria, its children per category and every child that needs attention
    (refused, invalid, retrying, failed) with its first problem. JSON-serialisable.

    `finished` is true when no child is pending, sent or accepted any more (a retrying child
    is the outbox's, which keeps trying on its own).
    """
    with services.db.read() as conn:
        job = conn.execute(select(transfer_job).where(
            transfer_job.c.org == org, transfer_job.c.id == job_id)).mappings().first()
        if job is None:
            raise NotFound(f"No transfer job {job_id}")
        numbers = _counts(conn, org, job_id)
        listed = conn.execute(select(
            transfer.c.id, transfer.c.patient_id, transfer.c.recipient, transfer.c.state,
            transfer.c.problems).where(
            transfer.c.org == org, transfer.c.job_id == job_id,
            transfer.c.state.in_(_LISTED_STATES)).order_by(transfer.c.created, transfer.c.id))
        attention = [{"transfer": r.id, "patient": f"Patient/{r.patient_id}",
                      "recipient": r.recipient or None, "state": r.state,
                      "category": category(r.state, r.problems),
                      "problem": _first(r.problems) or None} for r in listed]
    return {"job": job["id"], "created": instant(as_utc(job["created"])),
            "requested_by": job["requested_by"], "criteria": job["criteria"],
            "total": numbers.pop("total"), "counts": numbers,
            "finished": not (numbers["pending"] or numbers["sent"] or numbers["accepted"]),
            "attention": attention}
