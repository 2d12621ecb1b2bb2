"""Storing one dossier: `ResourceStore.create` per resource vs one `create_many`, both backends.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_store_batch.py                 # SQLite only
    python tests/perf/bench_store_batch.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python tests/perf/bench_store_batch.py --rounds 3      # a smoke run

Why: the dossier import (`ekd.transfer.importer`) stores ~200 new resources in one transaction;
with `create` that is a round trip per resource on PostgreSQL and ~8 statements per resource on
SQLite. This measures what batching saves, on the same resources, in the same run.

The dossier is a synthetic child's transaction Bundle (`ekd.jgz.demo`, seed 3, 206 resources
of 9 types, references rewritten to the given ids), stored with the server's real search
parameters (index rows included). Each round stores it twice on a fresh set of ids, once per
way, alternating which goes first, each in its own write transaction including the COMMIT. The
`index` line is the part both ways share: stamping plus computing the index rows in Python.
Figures are the median (and fastest) over the rounds; the ratios are printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from ekd.api.app import build_services  # noqa: E402
from ekd.config import Settings  # noqa: E402
from ekd.interaction.base import Services  # noqa: E402
from ekd.store.database import Database  # noqa: E402
from ekd.store.resources import _stamp, instant, now  # noqa: E402

# The test module's helpers import FastAPI's TestClient, which warns about httpx on import.
warnings.filterwarnings("ignore", message="Using `httpx`")
from tests.test_store_batch import dossier  # noqa: E402

ORG = "90000010"


@contextlib.contextmanager
def services_on(url: str | None) -> Iterator[tuple[str, Services]]:
    """Services on a temporary SQLite file (url None) or a scratch PostgreSQL database."""
    with tempfile.TemporaryDirectory() as tmp:
        if url is None:
            db_url, scratch = f"sqlite:///{tmp}/bench.db", contextlib.nullcontext()
        else:
            from tests.db_helpers import scratch_database

            scratch = scratch_database(url, "ekd_bench_batch")
        with scratch as scratch_url:
            database = Database(scratch_url or db_url)
            try:
                database.upgrade()
                settings = Settings(database_url=str(database.url), base_url="http://bench/fhir",
                                    jgz_enforce=False, key_dir=f"{tmp}/keys")
                yield database.dialect, build_services(settings, database)
            finally:
                database.dispose()


def measure(services: Services, rounds: int) -> dict[str, list[float]]:
    """Seconds per round: each way's whole write transaction and its store calls alone."""
    base = dossier()
    times: dict[str, list[float]] = defaultdict(list)

    def items(tag: str) -> list[tuple[str, str, dict]]:
        return [(t, f"{i}-{tag}"[:64], c) for t, i, c in base]

    def one_by_one(tag: str) -> float:
        batch = items(tag)
        with services.db.write() as conn:
            store = services.store(conn, ORG)
            start = time.perf_counter()
            for t, i, c in batch:
                store.create(t, i, c, method="PUT")
            return time.perf_counter() - start

    def batched(tag: str) -> float:
        batch = items(tag)
        with services.db.write() as conn:
            store = services.store(conn, ORG)
            start = time.perf_counter()
            store.create_many(batch)
            return time.perf_counter() - start

    def indexing(_tag: str) -> float:
        with services.db.read() as conn:
            store = services.store(conn, ORG)
            when = instant(now())
            for t, i, c in base:
                store._index_rows(_stamp(c, t, i, 1, when))
        return 0.0

    # Single-resource writes (the REST API's create): would a one-item batch do as well?
    patient = {"resourceType": "Patient", "name": [{"family": "Bench"}], "gender": "female"}

    def single(tag: str) -> float:
        with services.db.write() as conn:
            services.store(conn, ORG).create("Patient", f"s-{tag}", patient)
        return 0.0

    def single_many(tag: str) -> float:
        with services.db.write() as conn:
            services.store(conn, ORG).create_many([("Patient", f"s-{tag}", patient)])
        return 0.0

    def run(name: str, fn: Callable[[str], float], tag: str) -> None:
        start = time.perf_counter()
        inner = fn(tag)
        times[name].append(time.perf_counter() - start)
        times[name + ":calls"].append(inner)

    batched("warm-a")
    one_by_one("warm-b")
    for r in range(rounds):
        pair: list[tuple[str, Callable[[str], float]]] = [
            ("create", one_by_one), ("create_many", batched)]
        singles: list[tuple[str, Callable[[str], float]]] = [
            ("single create", single), ("single create_many", single_many)]
        if r % 2:  # alternate which goes first, so drift hits both alike
            pair.reverse()
            singles.reverse()
        for name, fn in pair:
            run(name, fn, f"{name}-{r}")
        run("index", indexing, "")
        for k in range(20):
            for name, fn in singles:
                run(name, fn, f"{name}-{r}-{k}".replace(" ", ""))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL server URL (a scratch database "
                        "is created on it and dropped); without it, SQLite only")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n = len(dossier())
    results: list[tuple[str, dict[str, list[float]]]] = []
    for url in [None, args.database_url] if args.database_url else [None]:
        with services_on(url) as (dialect, services):
            print(f"{dialect}: {args.rounds} rounds of {n} resources ...", file=sys.stderr)
            results.append((dialect, measure(services, args.rounds)))

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} ms ({min(values) * 1000:6.1f})"

    print(f"\nOne dossier of {n} resources; median (fastest) of {args.rounds} rounds, in ms")
    print(f"  {'':<10} {'':<30} {'transaction incl. COMMIT':>26}   {'store calls only':>22}")
    for dialect, times in results:
        for name, label in (("create", f"create x {n}"), ("create_many", "create_many")):
            print(f"  {dialect:<10} {label:<30} {ms(times[name]):>26}   "
                  f"{ms(times[name + ':calls']):>22}")
        print(f"  {dialect:<10} {'stamp + index rows (shared)':<30} {ms(times['index']):>26}")
        for name in ("single create", "single create_many"):
            values = times[name]
            print(f"  {dialect:<10} {'1 Patient: ' + name:<30} "
                  f"{statistics.median(values) * 1000:8.2f} ms ({min(values) * 1000:6.2f})")
    print("\nRatio create per item / create_many (medians: transaction, store calls only):")
    for dialect, times in results:
        whole = statistics.median(times["create"]) / statistics.median(times["create_many"])
        calls = (statistics.median(times["create:calls"])
                 / statistics.median(times["create_many:calls"]))
        print(f"  {dialect:<10} {whole:.2f}x   {calls:.2f}x")


if __name__ == "__main__":
    main()
