"""What an administrator sees of transfers: state, problems, receipts (never the package)."""

from __future__ import annotations

from sqlalchemy import func, select

from ekd.interaction.base import Services
from ekd.store.resources import as_utc, instant
from ekd.store.schema import transfer, transfer_inbox

_SHOWN = ("id", "patient_id", "recipient", "reason", "state", "job_id", "created", "updated",
          "resources", "package_hash", "attempts", "problems")


#: The listed columns only: a row's package (the ciphertext, ~0.5 MB a dossier) and receipts
#: stay in the database; a listing that loaded them spent most of its time copying blobs.
_COLUMNS = (*(transfer.c[k] for k in _SHOWN),
            transfer.c.technical_receipt.is_not(None).label("technical"),
            transfer.c.application_receipt.is_not(None).label("application"))


def _view(row: dict) -> dict:
    out = {k: row[k] for k in _SHOWN}
    for k in ("created", "updated"):
        out[k] = instant(as_utc(out[k]))
    out["receipts"] = {"technical": bool(row["technical"]),
                       "application": bool(row["application"])}
    return out


def transfer_view(services: Services, org: str, transfer_id: str) -> dict | None:
    with services.db.read() as conn:
        row = conn.execute(select(*_COLUMNS).where(
            transfer.c.org == org, transfer.c.id == transfer_id)).mappings().first()
    return _view(dict(row)) if row is not None else None


def transfers(services: Services, org: str, *, state: str | None = None, job: str | None = None,
              limit: int = 100) -> list[dict]:
    query = select(*_COLUMNS).where(transfer.c.org == org)
    if state:
        query = query.where(transfer.c.state == state)
    if job:
        query = query.where(transfer.c.job_id == job)
    with services.db.read() as conn:
        rows = conn.execute(query.order_by(transfer.c.created).limit(limit)).mappings().all()
    return [_view(dict(r)) for r in rows]


def counts(services: Services, org: str, *, job: str | None = None) -> dict[str, int]:
    query = select(transfer.c.state, func.count()).where(transfer.c.org == org)
    if job:
        query = query.where(transfer.c.job_id == job)
    with services.db.read() as conn:
        return {state: int(n) for state, n in conn.execute(query.group_by(transfer.c.state))}


def received(services: Services, org: str, *, state: str | None = None,
             limit: int = 100) -> list[dict]:
    query = select(transfer_inbox.c.pk, transfer_inbox.c.sender, transfer_inbox.c.transfer_id,
                   transfer_inbox.c.state, transfer_inbox.c.received, transfer_inbox.c.processed,
                   transfer_inbox.c.problems, transfer_inbox.c.patient_id
                   ).where(transfer_inbox.c.org == org)
    if state:
        query = query.where(transfer_inbox.c.state == state)
    with services.db.read() as conn:
        rows = conn.execute(query.order_by(transfer_inbox.c.pk).limit(limit)).mappings().all()
    out = []
    for r in rows:
        item = dict(r)
        item["received"] = instant(as_utc(item["received"]))
        item["processed"] = instant(as_utc(item["processed"])) if item["processed"] else None
        out.append(item)
    return out
