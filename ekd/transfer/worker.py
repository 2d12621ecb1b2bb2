"""The transfer worker: outbox, inbox and bulk runs, in a loop beside the HTTP server.

A daemon thread in each `ekd serve` process (or `ekd transfer work` on its own). All its work
is claimed with leases (`claims`), so several processes can run it at once, and a process
killed at any point leaves nothing that the next one cannot pick up.
"""

from __future__ import annotations

import logging
import threading

from ekd.interaction.base import Services
from ekd.transfer import bulk, importer, outbox
from ekd.transfer.context import Exchange

log = logging.getLogger("ekd.transfer")


def run_once(services: Services, exchange: Exchange) -> int:
    """One round of every kind of work; how many items were handled."""
    done = bulk.prepare_due(services, exchange)
    done += outbox.dispatch_due(services, exchange)
    done += importer.process_due(services, exchange)
    return done


def run_until_idle(services: Services, exchange: Exchange, *, rounds: int = 1000) -> int:
    total = 0
    for _ in range(rounds):
        done = run_once(services, exchange)
        total += done
        if not done:
            break
    return total


class Worker:
    """`threads` loops over the same work. Work items are claimed under leases (`claims`), so
    the threads never share one; what they gain is overlap: while one waits on the database
    (a commit, a PostgreSQL round trip) or the relay, another validates the next package."""

    def __init__(self, services: Services, exchange: Exchange, *, threads: int | None = None
                 ) -> None:
        self.services = services
        self.exchange = exchange
        self._stop = threading.Event()
        count = max(1, threads if threads is not None else services.settings.exchange_threads)
        self._threads = [threading.Thread(target=self._loop, name=f"ekd-transfer-{n}",
                                          daemon=True) for n in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.exchange.work.set()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        poll = self.services.settings.exchange_poll
        work = self.exchange.work
        while not self._stop.is_set():
            # Cleared before the round: a wake-up during it makes the wait below return at
            # once, so no queued item waits for the poll.
            work.clear()
            try:
                done = run_once(self.services, self.exchange)
            except Exception as exc:  # keep the loop alive; the type only (no data in logs)
                log.error("transfer worker round failed: %s", type(exc).__name__)
                done = 0
            if not done:
                work.wait(poll)
