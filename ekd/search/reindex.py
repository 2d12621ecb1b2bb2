"""Rebuilding index rows after the search parameters changed (`ekd reindex`).

Writes index a resource with the parameters in force at the time. A SearchParameter added
later (stored through the API, or a new ekd version with more parameters) applies to older
resources only once they are reindexed. A run walks the current resources in pk order, in
batches of one transaction each, and records its progress in `reindex_job` under a name made
of the parameters' signature: an interrupted run (crash, Ctrl-C) resumes after the last
committed batch, and a finished run is not repeated for the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, insert, select, update

from ekd.store.resources import now
from ekd.store.schema import reindex_job, resource

if TYPE_CHECKING:
    from ekd.interaction.base import Services


@dataclass
class IndexStatus:
    signature: str
    resources: int
    #: A full run for the current parameters finished, or everything was written under them.
    current: bool


@dataclass
class ReindexReport:
    name: str
    total: int
    reindexed: int
    resumed_after: int
    already_done: bool = False


Progress = Callable[[int, int], None]


def job_name(signature: str, types: list[str] | None) -> str:
    return signature + (":" + ",".join(sorted(types)) if types else "")


def status(services: Services) -> IndexStatus:
    signature = services.search.parameters.signature()
    with services.db.read() as conn:
        count = conn.execute(select(func.count()).select_from(resource).where(
            resource.c.deleted.is_(False))).scalar_one()
        done = conn.execute(select(reindex_job.c.name).where(
            reindex_job.c.name == signature, reindex_job.c.done.is_(True))).first()
    return IndexStatus(signature, int(count), done is not None)


def mark_current_if_empty(services: Services) -> IndexStatus:
    """An empty store is indexed under any parameters: record that, so that a later start
    with the same parameters does not ask for a reindex."""
    state = status(services)
    if state.resources == 0 and not state.current:
        with services.db.write() as conn:
            _upsert(conn, state.signature, total=0, last_pk=0, done=True)
        state.current = True
    return state


def run(services: Services, *, types: list[str] | None = None, batch: int = 500,
        restart: bool = False, progress: Progress | None = None) -> ReindexReport:
    signature = services.search.parameters.signature()
    name = job_name(signature, types)
    db = services.db
    with db.write() as conn:
        job = conn.execute(select(reindex_job).where(reindex_job.c.name == name)).first()
        total = int(conn.execute(select(func.count()).select_from(resource).where(
            *_scope(types))).scalar_one())
        if job is not None and job.done and not restart:
            return ReindexReport(name, int(job.total), 0, int(job.last_pk), already_done=True)
        start = 0 if job is None or restart else int(job.last_pk)
        _upsert(conn, name, total=total, last_pk=start, done=False)
    done_before = 0
    if start:
        with db.read() as conn:
            done_before = int(conn.execute(select(func.count()).select_from(resource).where(
                *_scope(types), resource.c.pk <= start)).scalar_one())
    reindexed, last = 0, start
    if progress:
        progress(done_before, total)
    while True:
        with db.write() as conn:
            store = services.store(conn)
            q = select(resource.c.pk).where(*_scope(types), resource.c.pk > last).order_by(
                resource.c.pk).limit(batch)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()  # a concurrent update must not interleave
            pks = list(conn.execute(q).scalars())
            if not pks:
                conn.execute(update(reindex_job).where(reindex_job.c.name == name).values(
                    done=True, finished=now()))
                break
            for stored in store.current_many(pks):
                store.reindex(stored)
            last = pks[-1]
            conn.execute(update(reindex_job).where(reindex_job.c.name == name).values(
                last_pk=last))
        reindexed += len(pks)
        if progress:
            progress(done_before + reindexed, total)
    if not types:
        # A full run also covers what type-limited runs would have done.
        with db.write() as conn:
            _upsert(conn, signature, total=total, last_pk=last, done=True)
    return ReindexReport(name, total, reindexed, start)


def _scope(types: list[str] | None) -> list:
    conds = [resource.c.deleted.is_(False)]
    if types:
        conds.append(resource.c.type.in_(types))
    return conds


def _upsert(conn: Connection, name: str, *, total: int, last_pk: int, done: bool) -> None:
    values = {"total": total, "last_pk": last_pk, "done": done,
              "finished": now() if done else None}
    changed = conn.execute(update(reindex_job).where(reindex_job.c.name == name).values(
        **values)).rowcount
    if not changed:
        conn.execute(insert(reindex_job).values(name=name, started=now(), **values))
