"""Crash tests with real processes: the sender, the relay and the receiver are killed with
SIGKILL at the worst moments (`ekd.transfer.failpoints`), restarted, and every transfer still
ends imported exactly once: one inbox row, one child at the receiver, the sender `imported`.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ekd.transfer import failpoints
from tests.exchange_processes import GGD, RELAY, THUISZORG, Network, network

CASES = [
    (THUISZORG, "sender-after-queue"),
    (THUISZORG, "sender-after-relay"),
    (GGD, "receiver-before-stored"),
    (GGD, "receiver-before-import"),
    (GGD, "receiver-after-import"),
]


def test_every_failpoint_has_a_crash_test() -> None:
    assert {point for _, point in CASES} == set(failpoints.POINTS)


def children_at(net: Network, ura: str) -> int:
    with net.client(ura) as c:
        bundle = c.get(f"{net.base(ura)}/fhir/Patient", params={"_summary": "count"}).json()
    return int(bundle["total"])


#: On PostgreSQL (production) too: the receiver killed inside its import transaction, where
#: exactly-once rests on the server rolling back a dead connection's transaction and the
#: claim's lease running out. The other points run on SQLite only (~30 s each, mostly server
#: starts), to keep the test run short.
RUNS = [("sqlite", victim, point) for victim, point in CASES] + [
    ("postgresql", GGD, "receiver-before-import")]


@pytest.mark.parametrize(("backend", "victim", "failpoint"), RUNS,
                         ids=[f"{b}-{f}" for b, _, f in RUNS])
def test_killed_and_restarted_the_transfer_ends_imported_once(
        backend: str, victim: str, failpoint: str, tmp_path: Path) -> None:
    with network(tmp_path, backend) as net:
        net.start(RELAY)
        net.start(THUISZORG, failpoint if victim == THUISZORG else None)
        net.start(GGD, failpoint if victim == GGD else None)
        child = net.load_child(THUISZORG)
        transfer_id = net.transfer(THUISZORG, child, GGD)
        assert net.wait_dead(victim) == -signal.SIGKILL
        net.start(victim)  # the same database, no failpoint
        assert net.wait_final(THUISZORG, transfer_id) == "imported"
        received = net.received(GGD)
        assert [r["state"] for r in received] == ["imported"]
        assert children_at(net, GGD) == 1


def test_relay_killed_while_holding_the_package(tmp_path: Path) -> None:
    """The relay stored the package and dies before it could deliver (the GGD is down)."""
    with network(tmp_path, "sqlite") as net:
        net.start(RELAY)
        net.start(THUISZORG)
        child = net.load_child(THUISZORG)
        transfer_id = net.transfer(THUISZORG, child, GGD)
        deadline_state = ""
        for _ in range(100):
            deadline_state = net.state(THUISZORG, transfer_id)
            if deadline_state == "sent":
                break
            import time

            time.sleep(0.1)
        assert deadline_state == "sent"
        relay = net.servers[RELAY]
        assert relay.proc is not None
        import os

        os.killpg(relay.proc.pid, signal.SIGKILL)
        relay.proc.wait(10)
        net.start(GGD)
        net.start(RELAY)
        assert net.wait_final(THUISZORG, transfer_id) == "imported"
        assert [r["state"] for r in net.received(GGD)] == ["imported"]
        assert children_at(net, GGD) == 1
