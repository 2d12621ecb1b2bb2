"""Sending what the outbox holds to the relay: at least once, identical bytes every time.

A message is claimed (lease), posted, and only then marked sent, in one transaction with the
transfer's state change and its audit record. A crash after the relay stored the message but
before that commit resends it after the lease runs out; the relay answers a resend of the same
id and bytes as it did the first time, and the receiver deduplicates on the transfer id.
Failures back off exponentially (`EKD_EXCHANGE_RETRY_BASE` doubling up to `…_CAP`); after
`EKD_EXCHANGE_MAX_ATTEMPTS` the transfer is dead-lettered, which an administrator sees in the
status and the bulk report. Right before a package goes out the objection check runs again.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import update

from ekd.interaction.base import Services
from ekd.store.resources import now
from ekd.store.schema import transfer_outbox
from ekd.transfer import claims, failpoints, sender
from ekd.transfer.context import Exchange, RelayRefused, RelayUnavailable
from ekd.transfer.states import FINAL, State

log = logging.getLogger("ekd.transfer")


def backoff(services: Services, attempts: int) -> timedelta:
    s = services.settings
    return timedelta(seconds=min(s.exchange_retry_cap, s.exchange_retry_base * 2 ** (attempts - 1)))


def dispatch_due(services: Services, exchange: Exchange, *, limit: int = 20) -> int:
    """Send the messages that are due; how many were handled."""
    rows = claims.claim(services.db, transfer_outbox, "pk", [
        transfer_outbox.c.org == exchange.ura, transfer_outbox.c.state == "pending",
        transfer_outbox.c.next_attempt <= now()], limit=limit, order_by="pk",
        lease=claims.lease_of(services.settings))
    for row in rows:
        dispatch(services, exchange, row)
    return len(rows)


def dispatch(services: Services, exchange: Exchange, row: dict) -> None:
    failpoints.hit("sender-after-queue")
    if row["kind"] == "package" and not _still_wanted(services, row):
        return
    message = {"id": row["message_id"], "recipient": row["recipient"], "kind": row["kind"],
               "transfer": row["transfer_id"], "body": row["body"]}
    try:
        exchange.post_message(message)
    except RelayUnavailable as exc:
        _failed(services, row, str(exc), retry=True)
        return
    except RelayRefused as exc:
        _failed(services, row, str(exc), retry=False)
        return
    failpoints.hit("sender-after-relay")
    with services.db.write() as conn:
        conn.execute(update(transfer_outbox).where(transfer_outbox.c.pk == row["pk"]).values(
            state="sent", attempts=row["attempts"] + 1, claimed_until=None, last_error=None))
        if row["kind"] == "package":
            current = sender.load(conn, row["transfer_id"])
            if current is not None and current["state"] in (State.QUEUED,
                                                            State.FAILED_RETRYABLE):
                moved = sender.move(conn, current, State.SENT,
                                    attempts=current["attempts"] + 1)
                sender.audit(conn, sender.worker_principal(moved["org"]), moved, status=200,
                             action="E", step="transfer-export")


def _still_wanted(services: Services, row: dict) -> bool:
    """Cancel at dispatch when an objection was recorded meanwhile (or the transfer ended)."""
    with services.db.write() as conn:
        current = sender.load(conn, row["transfer_id"])
        if current is not None and State(current["state"]) not in FINAL \
                and not sender.cancel_if_objection(services, conn, current):
            return True
        conn.execute(update(transfer_outbox).where(transfer_outbox.c.pk == row["pk"])
                     .values(state="cancelled", claimed_until=None))
        return False


def _failed(services: Services, row: dict, error: str, *, retry: bool) -> None:
    attempts = row["attempts"] + 1
    give_up = not retry or attempts >= services.settings.exchange_max_attempts
    log.warning("transfer %s: %s message not sent (attempt %d): %s", row["transfer_id"],
                row["kind"], attempts, error)
    with services.db.write() as conn:
        conn.execute(update(transfer_outbox).where(transfer_outbox.c.pk == row["pk"]).values(
            state="failed" if give_up else "pending", attempts=attempts,
            next_attempt=now() + backoff(services, attempts), claimed_until=None,
            last_error=error[:2000]))
        if row["kind"] != "package":
            return
        current = sender.load(conn, row["transfer_id"])
        if current is None or State(current["state"]) in FINAL:
            return
        problems = [{"code": "relay", "message": error}]
        if give_up:
            moved = sender.move(conn, current, State.DEAD_LETTER, attempts=attempts,
                                problems=problems)
            sender.audit(conn, sender.worker_principal(moved["org"]), moved, status=502,
                         action="E", step="transfer-dead-letter", description=error)
        else:
            sender.move(conn, current, State.FAILED_RETRYABLE, attempts=attempts,
                        problems=problems)

