"""Leases on work rows (outbox messages, received packages, bulk children).

A worker claims a few due rows by setting `claimed_until` in a short transaction of its own;
the lease keeps other workers (another `ekd serve` process) off them while it works without a
transaction open, and runs out by itself when the worker dies (SIGKILL), so the row is taken
up again after a restart. On PostgreSQL `FOR UPDATE SKIP LOCKED` lets concurrent claimers pass
each other instead of queueing; SQLite's single writer serialises them anyway.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, Table, or_, select, update

from ekd.config import Settings
from ekd.store.database import Database
from ekd.store.resources import now

LEASE = timedelta(seconds=120)


def claim(db: Database, table: Table, key: str, where: list[ColumnElement[bool]], *,
          limit: int, order_by: str, lease: timedelta = LEASE) -> list[dict]:
    """Claim up to `limit` rows matching `where` whose lease is free or ran out."""
    moment = now()
    free = or_(table.c.claimed_until.is_(None), table.c.claimed_until < moment)
    query = select(table.c[key]).where(*where, free).order_by(table.c[order_by]).limit(limit)
    # Most polls find nothing: look first without the write lock (SQLite's is database-wide,
    # and every worker thread of every process polls several tables).
    with db.autocommit() as conn:
        if conn.execute(query.limit(1)).first() is None:
            return []
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        keys = [r[0] for r in conn.execute(query)]
        if not keys:
            return []
        conn.execute(update(table).where(table.c[key].in_(keys))
                     .values(claimed_until=moment + lease))
        rows = conn.execute(select(table).where(table.c[key].in_(keys))
                            .order_by(table.c[order_by])).mappings()
        return [dict(r) for r in rows]


def lease_of(settings: Settings) -> timedelta:
    """The configured lease (`EKD_EXCHANGE_LEASE`)."""
    return timedelta(seconds=settings.exchange_lease)

