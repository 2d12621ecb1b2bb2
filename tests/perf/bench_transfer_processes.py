"""Dossier transfer with real processes (#7): dossiers/s through the relay and two `ekd serve`
instances on 127.0.0.1, the CPU each process spent per dossier, and in the same run the floor
of validating and importing the same dossiers in this process.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_transfer_processes.py                  # SQLite, 40 dossiers
    python tests/perf/bench_transfer_processes.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python tests/perf/bench_transfer_processes.py --quick          # CI smoke run

Why a second transfer benchmark: `bench_transfer.py` runs sender, relay and receiver as
function calls in one process, so their times add up. Deployed, they are separate processes
(`tests/exchange_processes.Network`: mutual TLS, the relay `ekd exchange serve`, each
organisation its own database), and the sender packs the next dossier while the receiver
imports the previous one. This measures that pipeline as a user would see it: `$transfer`
requests for the whole cohort (from `--clients` threads), then the wall time until every
transfer is `imported`. The CPU split is read from /proc for each server's process group
(user + system seconds), so it shows which process bounds the rate on a 2-core machine.

Steady state is measured: `--warmup` children are transferred first and not counted, because
each server process compiles profiles, FHIRPath expressions and query plans on first use.

Floor (same run, after the servers went idle): the same dossiers, as the sender holds them,
validated and stored with new ids in a fresh local database, one transaction per dossier
(`bench_transfer.floor`), after the same warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transfer  # noqa: E402

from ekd.jgz import demo  # noqa: E402
from tests.exchange_processes import GGD, RELAY, THUISZORG, Network  # noqa: E402
from tests.perf._servers import log  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the process group (a server and its
    uvicorn workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


@contextlib.contextmanager
def databases(database_url: str | None, folder: Path) -> Iterator[dict[str, str]]:
    if not database_url:
        yield {THUISZORG: f"sqlite:///{folder / 'a.db'}", GGD: f"sqlite:///{folder / 'b.db'}"}
        return
    from tests.db_helpers import scratch_database

    with scratch_database(database_url, "ekd_benchp_a") as a, \
            scratch_database(database_url, "ekd_benchp_b") as b:
        yield {THUISZORG: a, GGD: b}


def load(net: Network, children: int, seed: int) -> list[str]:
    with net.client(THUISZORG) as c:
        base = net.base(THUISZORG)
        assert c.post(f"{base}/fhir", json=demo.shared_bundle()).status_code == 200
        ids = []
        for bundle in demo.generate(children, seed=seed):
            bundle["entry"] = [e for e in bundle["entry"] if not (
                e["resource"]["resourceType"] == "Consent"
                and e["resource"].get("provision", {}).get("type") == "deny")]
            loaded = c.post(f"{base}/fhir", json=bundle)
            assert loaded.status_code == 200, loaded.text
            ids += [e["response"]["location"].split("/")[1] for e in loaded.json()["entry"]
                    if e["response"].get("location", "").startswith("Patient/")]
        return ids


def dossiers(net: Network, patients: list[str]) -> list[list[dict]]:
    with net.client(THUISZORG) as c:
        base = net.base(THUISZORG)
        return [[e["resource"] for e in c.get(f"{base}/fhir/Patient/{p}/$everything",
                                              params={"_count": 1000}).json()["entry"]]
                for p in patients]


def transfer_all(net: Network, patients: list[str], clients: int, timeout: float
                 ) -> tuple[float, dict[str, int]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ids = list(pool.map(lambda p: net.transfer(THUISZORG, p, GGD), patients))
    wanted = set(ids)
    states: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    with net.client(THUISZORG) as c:
        while time.monotonic() < deadline:
            rows = c.get(f"{net.base(THUISZORG)}/exchange/transfers",
                         params={"limit": 1000}).json()["transfers"]
            mine = [r for r in rows if r["id"] in wanted]
            states = {}
            for r in mine:
                states[r["state"]] = states.get(r["state"], 0) + 1
            if len(mine) == len(wanted) and set(states) <= {"imported", "rejected",
                                                            "dead-letter", "invalid",
                                                            "cancelled"}:
                break
            time.sleep(0.25)
    return time.perf_counter() - start, states


def probe_writes(net: Network, stop: threading.Event, latencies: list[float]) -> None:
    """A REST write at the receiver every 0.1 s while it imports: what a nurse's client
    waits there during a bulk of incoming dossiers (on SQLite, for the one writer)."""
    bundle = next(demo.generate(1, seed=999))
    body = next(e["resource"] for e in bundle["entry"]
                if e["resource"]["resourceType"] == "Patient")
    with net.client(GGD) as c:
        while not stop.is_set():
            start = time.perf_counter()
            resp = c.post(f"{net.base(GGD)}/fhir/Patient", json=body)
            assert resp.status_code == 201, resp.text
            latencies.append(time.perf_counter() - start)
            stop.wait(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4,
                        help="threads sending the $transfer requests")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (scratch databases "
                                               "are made on it); default SQLite")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes of each ekd instance (ekd serve --workers)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 children")
    parser.add_argument("--warmup", type=int, default=4,
                        help="children transferred first, not counted: a server compiles "
                             "profiles and expressions on first use, once per process")
    parser.add_argument("--probe", action="store_true",
                        help="also time a REST write at the receiver every 0.1 s during the "
                             "transfers (adds that load)")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.children, args.warmup = 4, 1
    with tempfile.TemporaryDirectory(prefix="ekd-bench-procs-") as tmp:
        folder = Path(tmp)
        with databases(args.database_url, folder) as dbs:
            net = Network(folder, dbs)
            net.workers = {THUISZORG: args.workers, GGD: args.workers}
            try:
                for ura in (RELAY, THUISZORG, GGD):
                    net.start(ura)
                log(f"loading {args.warmup} + {args.children} demo children at the sender …")
                everyone = load(net, args.warmup + args.children, args.seed)
                warm, patients = everyone[:args.warmup], everyone[args.warmup:]
                held, held_warm = dossiers(net, patients), dossiers(net, warm)
                if warm:
                    log(f"warming up: transferring {len(warm)} children, not counted …")
                    _, warm_states = transfer_all(net, warm, args.clients, timeout=600)
                    assert warm_states == {"imported": len(warm)}, warm_states
                pgids = {name: net.servers[ura].proc.pid  # type: ignore[union-attr]
                         for name, ura in (("sender", THUISZORG), ("relay", RELAY),
                                           ("receiver", GGD))}
                before = {name: cpu_seconds(pgid) for name, pgid in pgids.items()}
                log("transferring …")
                stop, latencies = threading.Event(), []
                prober = threading.Thread(target=probe_writes, args=(net, stop, latencies))
                if args.probe:
                    prober.start()
                try:
                    wall, states = transfer_all(net, patients, args.clients, timeout=600)
                finally:
                    stop.set()
                    if args.probe:
                        prober.join()
                cpu = {name: cpu_seconds(pgid) - before[name] for name, pgid in pgids.items()}
            finally:
                net.close()
        log("floor: validating and importing the same dossiers locally …")
        with bench_transfer.world_on(args.database_url) as world:
            bench_transfer.floor(world, held_warm)  # warm, as the servers were
            floor_time = bench_transfer.floor(world, held)
    n = len(patients)
    sizes = sorted(len(d) for d in held)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\nbackend {backend}; {n} dossiers, {min(sizes)}-{max(sizes)} resources "
          f"(median {sizes[len(sizes) // 2]}); {args.clients} client threads; "
          f"{args.workers} process(es) per ekd instance; "
          f"{os.cpu_count()} CPUs")
    print(f"final states: {states}")
    print("\nCPU per dossier by process (user + system):")
    for name, seconds in cpu.items():
        print(f"  {name:<10} {seconds * 1000 / n:8.1f} ms/dossier")
    total_cpu = sum(cpu.values())
    print(f"  {'all':<10} {total_cpu * 1000 / n:8.1f} ms/dossier "
          f"(busy {total_cpu / wall:.2f} cores on average)")
    if latencies:
        ms = sorted(t * 1000 for t in latencies)
        print(f"\nREST writes at the receiver meanwhile: {len(ms)}, ms p50 "
              f"{ms[len(ms) // 2]:.1f}, p90 {ms[int(len(ms) * 0.9)]:.1f}, max {ms[-1]:.1f}")
    assert states == {"imported": n}, states
    bench_transfer.report("end to end (real processes)", n, wall, floor_time)


if __name__ == "__main__":
    main()
