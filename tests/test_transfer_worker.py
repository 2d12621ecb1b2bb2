"""The transfer worker's threads start on queued work at once, not at their next poll.

Queuing work (a `$transfer`, a package stored in the inbox) wakes the worker after the queuing
transaction commits (`Exchange.work_queued` → `Database.after_commit`). The workers here poll
every 60 s, so every step finishing within the deadline shows the wake-up, on both backends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from ekd.api.app import build_services
from ekd.config import Settings
from ekd.store.database import Database, after_commit
from ekd.transfer.worker import Worker
from tests.test_transfer_flow import patient_id_of, send, transfer_state
from tests.transfer_helpers import BASE, GGD, THUISZORG, World, build_world

DEADLINE = 20.0  # far below the poll: only a wake-up gets there in time


def test_after_commit_hooks_run_once_and_only_after_a_commit(database: Database) -> None:
    calls: list[str] = []
    with database.write() as conn:
        after_commit(conn, lambda: calls.append("first"))
        conn.execute(text("SELECT 1"))
        assert calls == []  # not before the commit
    assert calls == ["first"]
    with pytest.raises(RuntimeError), database.write() as conn:
        after_commit(conn, lambda: calls.append("rolled back"))
        raise RuntimeError("roll back")
    with database.write() as conn:  # likely the same pooled connection: nothing left on it
        conn.execute(text("SELECT 1"))
    assert calls == ["first"]


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"
        time.sleep(0.05)


@pytest.fixture
def world(database: Database, tmp_path: Path) -> World:
    settings = Settings(database_url=str(database.url), base_url=BASE, jgz_enforce=True,
                        key_dir=str(tmp_path / "keys"), exchange_poll=60.0)
    world = build_world(build_services(settings, database), tmp_path)
    assert all(s.settings.exchange_poll == 60.0 for s in world.orgs.values())
    return world


def test_workers_start_on_queued_work_without_waiting_for_the_poll(world: World) -> None:
    child = patient_id_of(world.load_child(THUISZORG))
    workers = [Worker(world.orgs[ura], world.orgs[ura].exchange, threads=2)  # type: ignore[arg-type]
               for ura in (THUISZORG, GGD)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.2)  # both have polled once, found nothing and now wait 60 s
        started = send(world, child)
        wait_for(lambda: transfer_state(world, started["id"]) == "sent",
                 "the sender's worker dispatched the queued package")
        world.relay.deliver_all()  # the GGD stores it: its worker imports, sends the receipt
        wait_for(lambda: (world.relay.deliver_all(),
                          transfer_state(world, started["id"]))[1] == "imported",
                 "the receiver's worker imported the package and sent its receipt")
    finally:
        for worker in workers:
            worker.stop()
