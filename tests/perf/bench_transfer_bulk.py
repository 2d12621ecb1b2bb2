"""Bulk transfer benchmark: wall time and peak memory of a cohort run, at two cohort sizes.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_transfer_bulk.py              # cohorts of 100 and 1,000 children
    python tests/perf/bench_transfer_bulk.py --quick      # cohorts of 5 and 50 (< 2 min)
    python tests/perf/bench_transfer_bulk.py --database-url postgresql+psycopg://u@host/db

Why two sizes in one run: what matters for a GGD's yearly intake is that a bulk run costs the
same per child and the same memory however large the cohort is (the cohort is read in pages,
the children are claimed a few at a time). Absolute figures on a shared machine drift; the
ratios of the larger cohort to the smaller, measured minutes apart on the same database, are
what can be compared over time. Time should grow 10x for 10x the children, memory not at all.

What is measured, per cohort: the bulk phase only, from `bulk.create_job` until every child is
final (imported at the GGD, or refused for an objection), through the in-process exchange of
the tests (`tests/transfer_helpers.py`: three organisations on one database, the relay a
function call). That phase includes everything ekd does per child on both sides: the
objection check, validation of the whole dossier, signing, encryption, the outbox, decryption,
verification, validation again, matching, the import, receipts and audit records. Peak memory
is the growth of the process's peak RSS over the phase (Linux: the peak is reset through
/proc/self/clear_refs first; elsewhere ru_maxrss, which can only show growth beyond the loading
phase's peak), and with `--tracemalloc` also Python's own allocation peak (slower; the
timings then include tracemalloc's overhead).

A first job of three children warms up what every first transfer fills (caches, the
allocator's arenas) and is not measured. The demo children (3 + N/10 + N, so that the cohorts
are disjoint) are loaded first, in process and without validation: the data is the
generator's, which the demo tests validate, and the bulk phase validates every resource again
anyway (an invalid one would show up as an invalid child, and the run checks that none does).
`--validate-load` loads through validation. The test relay keeps no message log here: it would
hold every package it carried, which is the harness's memory, not ekd's, and grows with the
cohort.

SQLite by default, in a temp dir; `--database-url` takes a PostgreSQL server, on which a
scratch database is created and dropped afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ekd.errors import Issue  # noqa: E402
from ekd.interaction.base import FhirRequest, Services  # noqa: E402
from ekd.interaction.transaction import process  # noqa: E402
from ekd.jgz import demo  # noqa: E402
from ekd.transfer import bulk  # noqa: E402
from tests.db_helpers import scratch_database  # noqa: E402
from tests.transfer_helpers import BASE, GGD, THUISZORG, World, make_world, principal  # noqa: E402

SEED = 11
#: Children of a first, unmeasured job: caches and the allocator's arenas fill up on the first
#: children any run sends, which would count against the smaller cohort only.
WARM_UP = 3


class _Forgetful(list):
    """The test relay's message log, which would keep every package it carried (the
    harness's memory, not ekd's: it would grow with the cohort)."""

    def append(self, item: object) -> None:
        pass


class _Unchecked:
    """A validator that finds nothing: the fast loading path (see the module docstring)."""

    def validate(self, resource: dict, profiles: object = ()) -> list[Issue]:
        return []


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- memory --------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Start a new peak-RSS measurement (Linux >= 4.0: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def measured(trace: bool) -> Iterator[dict]:
    """Wall time and peak memory growth of the block: seconds, rss_mb, traced_mb."""
    gc.collect()
    result: dict = {}
    reset = _reset_peak()
    rss_before = _status_kb("VmRSS") if reset else None
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        if trace:
            result["traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        peak = _status_kb("VmHWM") if reset else None
        if peak is not None and rss_before is not None:
            result["rss_mb"] = (peak - rss_before) / 1024
            result["rss_how"] = "VmHWM after reset - VmRSS before"
        else:
            result["rss_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                - maxrss_before) / 1024
            result["rss_how"] = "ru_maxrss delta"


# -- the world -----------------------------------------------------------------------------------


def load(world: World, count: int, *, validate: bool) -> list[str]:
    """`count` demo children at the thuiszorg; their birth dates, in load order."""
    services = world.orgs[THUISZORG]
    if not validate:
        services = dataclasses.replace(services, validator=_Unchecked(),  # type: ignore[arg-type]
                                       profile_selector=None, checks=())
    who = principal(THUISZORG)
    process(services, FhirRequest(method="POST", base=BASE, body=demo.shared_bundle(),
                                  principal=who))
    births = []
    start = time.perf_counter()
    for index, bundle in enumerate(demo.generate(count, seed=SEED)):
        response = process(services, FhirRequest(method="POST", base=BASE, body=bundle,
                                                 principal=who))
        if response.status >= 300:
            raise SystemExit(f"child {index} not loaded: {response.status}")
        births.append(next(e["resource"]["birthDate"] for e in bundle["entry"]
                           if e["resource"]["resourceType"] == "Patient"))
        if (index + 1) % 100 == 0 or index + 1 == count:
            elapsed = time.perf_counter() - start
            log(f"  loaded {index + 1}/{count} children ({elapsed:.0f} s)")
    return births


def objections(count: int) -> list[bool]:
    return [any(e["resource"]["resourceType"] == "Consent"
                and e["resource"]["provision"]["type"] == "deny" for e in b["entry"])
            for b in demo.generate(count, seed=SEED)]


def cohorts(births: list[str], sizes: list[int]) -> list[tuple[dt.date, dt.date, int]]:
    """Disjoint birth-date ranges, oldest first: one per size in `sizes`, the last with all
    the others. A boundary moves up past children sharing a birth date, so no child is in
    two ranges."""
    ordered = sorted(births)
    ranges, begin = [], 0
    for size in sizes:
        cut = begin + size
        while cut < len(ordered) and ordered[cut] == ordered[cut - 1]:
            cut += 1
        ranges.append((begin, cut))
        begin = cut
    ranges.append((begin, len(ordered)))
    return [(dt.date.fromisoformat(ordered[a]), dt.date.fromisoformat(ordered[b - 1]), b - a)
            for a, b in ranges]


def run_job(world: World, born_from: dt.date, born_to: dt.date) -> dict:
    """Create the job and run every organisation's worker until it is finished."""
    services: Services = world.orgs[THUISZORG]
    assert services.exchange is not None
    job, _ = bulk.create_job(services, services.exchange, principal=principal(THUISZORG),
                             born_from=born_from, born_to=born_to, recipient=GGD)
    while True:
        world.pump(rounds=50)
        counts = bulk.counts(services, THUISZORG, job)
        if not (counts["pending"] or counts["sent"] or counts["accepted"]):
            return bulk.report(services, THUISZORG, job)


def bench(url: str, folder: Path, n: int, *, validate_load: bool, trace: bool) -> None:
    small = max(1, n // 10)
    total = WARM_UP + small + n
    world = make_world(url, folder)
    world.relay.log = _Forgetful()
    log(f"loading {total} demo children (seed {SEED}) into {THUISZORG}"
        + (" through validation" if validate_load else " without validation"))
    start = time.perf_counter()
    births = load(world, total, validate=validate_load)
    load_s = time.perf_counter() - start
    refused = objections(total)
    results = []
    for number, (born_from, born_to, size) in enumerate(cohorts(births, [WARM_UP, small])):
        expected_refused = sum(r for r, b in zip(refused, births, strict=True)
                               if born_from.isoformat() <= b <= born_to.isoformat())
        label = "warm-up" if number == 0 else "bulk"
        log(f"{label}: {size} children born {born_from} to {born_to}")
        with measured(trace) as m:
            report = run_job(world, born_from, born_to)
        counts = report["counts"]
        if report["total"] != size or counts["refused"] != expected_refused \
                or counts["imported"] != size - expected_refused:
            raise SystemExit(f"unexpected outcome for {size} children: {report['total']} "
                             f"in the job, {counts}")
        log(f"  {m['seconds']:.1f} s, peak RSS +{m['rss_mb']:.1f} MB")
        if number:
            results.append((size, m, counts))
    print()
    print(f"ekd bulk transfer benchmark — {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{'PostgreSQL' if url.startswith('postgresql') else 'SQLite'}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"loading {total} children: {load_s:.1f} s "
          f"({'validated' if validate_load else 'unvalidated'})")
    print(f"peak memory: {results[0][1]['rss_how']}"
          + ("; Python allocations: tracemalloc peak (timings include its overhead)"
             if trace else ""))
    header = f"{'children':>9} {'imported':>9} {'refused':>8} {'wall s':>9} {'ms/child':>9} " \
             f"{'peak RSS MB':>12}" + (f" {'traced MB':>10}" if trace else "")
    print(header)
    for size, m, counts in results:
        line = (f"{size:>9} {counts['imported']:>9} {counts['refused']:>8} "
                f"{m['seconds']:>9.1f} {1000 * m['seconds'] / size:>9.1f} "
                f"{m['rss_mb']:>12.1f}")
        if trace:
            line += f" {m['traced_mb']:>10.1f}"
        print(line)
    (a, ma, _), (b, mb, _) = results
    time_ratio = mb["seconds"] / ma["seconds"]
    per_child = (mb["seconds"] / b) / (ma["seconds"] / a)
    print(f"ratios {b} vs {a} children ({b / a:.1f}x the children): wall time "
          f"{time_ratio:.2f}x, time per child {per_child:.2f}x (1 = linear), peak RSS growth "
          f"{mb['rss_mb']:.1f} vs {ma['rss_mb']:.1f} MB"
          + (f", tracemalloc peak {mb['traced_mb'] / ma['traced_mb']:.2f}x (1 = flat)"
             if trace else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=1000,
                        help="the larger cohort (the smaller one is a tenth of it)")
    parser.add_argument("--quick", action="store_true", help="--children 50: a smoke run")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (a scratch database "
                                               "is created on it); default: SQLite in a temp dir")
    parser.add_argument("--validate-load", action="store_true",
                        help="load the demo children through validation (slower)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also measure Python's allocation peak (slows the run)")
    args = parser.parse_args()
    n = 50 if args.quick else args.children
    if n < 10:
        parser.error("--children must be at least 10")
    with tempfile.TemporaryDirectory(prefix="ekd-bench-bulk-") as tmp:
        folder = Path(tmp)
        if args.database_url:
            with scratch_database(args.database_url, "ekd_bench_bulk") as url:
                bench(url, folder, n, validate_load=args.validate_load,
                      trace=args.tracemalloc)
        else:
            bench(f"sqlite:///{folder / 'ekd.db'}", folder, n,
                  validate_load=args.validate_load, trace=args.tracemalloc)


if __name__ == "__main__":
    main()
