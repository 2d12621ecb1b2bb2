"""Profile validation of one typical JGZ dossier, as the server validates it on write.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_validate_dossier.py                 # median ms per dossier
    python tests/perf/bench_validate_dossier.py --invariants    # + the costliest invariants
    python tests/perf/bench_validate_dossier.py --no-fold       # FHIRPath constant folding off
    python tests/perf/bench_validate_dossier.py --no-remember   # invariants evaluated every time
    python tests/perf/bench_validate_dossier.py --profile       # + a cProfile top list

The last line validates `--repeat` different children once each, as a receiver does; the
lines before it validate one dossier again and again, where remembered invariant outcomes
(`ekd.validation.invariants`) answer more than they would for new data.

The dossier is the resource entries of `ekd.jgz.demo.generate(1, seed=3)` plus the shared
organisations and practitioners (about 200 resources). Each is validated through
`ekd.interaction.write.validation_issues` with the JGZ profiles enforced (sqlite services, as
the tests build them). Setup (profile compilation, terminology caches) and a warm-up pass are
outside the timed loop.

`--no-fold` switches off `ekd.fhirpath.engine.FOLD_CONSTANTS` before any expression is
compiled: the same code without compile-time folding of constant sub-expressions and the set
and string fast paths built on it (the other speed-ups stay on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def dossier(seed: int = 3) -> list[dict]:
    from ekd.jgz import demo

    bundle = next(demo.generate(1, seed=seed))
    shared = demo.shared_bundle()
    return [e["resource"] for b in (shared, bundle) for e in b["entry"] if "resource" in e]


def build(folder: Path) -> Callable[[dict], list]:
    from ekd.api.app import build_services
    from ekd.config import Settings
    from ekd.interaction.write import validation_issues
    from ekd.store.database import Database

    url = f"sqlite:///{folder / 'ekd.db'}"
    db = Database(url)
    db.upgrade()
    settings = Settings(database_url=url, base_url="http://testserver/fhir", jgz_enforce=True,
                        key_dir=str(folder / "keys"))
    services = build_services(settings, db)
    return lambda resource: validation_issues(services, resource)


def time_dossier(validate: Callable[[dict], list], resources: list[dict], repeat: int,
                 clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """ms per pass over the dossier. `time.process_time` (CPU time of this process) is the
    steadier figure on a busy machine: time spent waiting for a CPU is not counted."""
    times = []
    for _ in range(repeat):
        start = clock()
        for r in resources:
            validate(r)
        times.append((clock() - start) * 1000)
    return times


def time_distinct(validate: Callable[[dict], list], seed: int, children: int
                  ) -> list[float]:
    """CPU ms per 200 resources for `children` different demo children, each validated once:
    what a receiver sees. Validating the same dossier again (`time_dossier`) lets remembered
    invariant outcomes answer everything from the second pass on; different children share
    only their codes and coded values."""
    from ekd.jgz import demo

    times = []
    for bundle in demo.generate(children, seed=seed + 1000):
        resources = [e["resource"] for e in bundle["entry"] if "resource" in e]
        start = time.process_time()
        for r in resources:
            validate(r)
        times.append((time.process_time() - start) * 1000 * 200 / len(resources))
    return times


def invariant_costs(validate: Callable[[dict], list], resources: list[dict], repeat: int
                    ) -> list[tuple[str, float, int]]:
    """(key, ms per dossier, evaluations per dossier), costliest first: every compiled
    invariant's evaluator is wrapped with a timer for the duration of the measurement. An
    invariant's figure is its lowest total over the passes (the least disturbed by other work
    on the machine); the timer itself adds well under a microsecond per evaluation."""
    import gc

    from ekd.validation import invariants as inv_module

    current: dict[str, list[float]] = {}
    best: dict[str, tuple[float, int]] = {}
    wrapped: list[tuple[Any, Any]] = []

    def timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                slot = current.setdefault(key, [0.0, 0])
                slot[0] += time.perf_counter() - start
                slot[1] += 1

        return run

    for obj in gc.get_objects():
        if type(obj) is inv_module.Invariant:
            wrapped.append((obj, obj.evaluate))
            obj.evaluate = timed(obj.key, obj.evaluate)
    try:
        for _ in range(repeat):
            current.clear()
            for r in resources:
                validate(r)
            for key, (seconds, n) in current.items():
                if key not in best or seconds < best[key][0]:
                    best[key] = (seconds, int(n))
    finally:
        for obj, fn in wrapped:
            obj.evaluate = fn
    rows = [(k, seconds * 1000, n) for k, (seconds, n) in best.items() if n]
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--invariants", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-fold", action="store_true")
    parser.add_argument("--no-remember", action="store_true")
    args = parser.parse_args()
    if args.no_remember:
        from ekd.validation import invariants

        invariants.REMEMBER_OUTCOMES = False  # read when invariants are compiled, i.e. below
    if args.no_fold:
        from ekd.fhirpath import engine

        engine.FOLD_CONSTANTS = False  # read when expressions are compiled, i.e. below
    resources = dossier(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        validate = build(Path(tmp))
        errors = 0
        for r in resources:  # warm-up: compile profiles, fill caches
            errors += sum(i.severity in ("error", "fatal") for i in validate(r))
        print(f"dossier: {len(resources)} resources, {errors} error issues; folding "
              f"{'off' if args.no_fold else 'on'}", file=sys.stderr)
        for label, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
            times = time_dossier(validate, resources, args.repeat, clock)
            print(f"ms per dossier ({label}), the same dossier again: median "
                  f"{statistics.median(times):.2f}, min {min(times):.2f}, max {max(times):.2f} "
                  f"({args.repeat} runs)")
        times = time_distinct(validate, args.seed, args.repeat)
        print(f"ms per 200 resources (cpu), {args.repeat} different children once each: "
              f"median {statistics.median(times):.2f}, min {min(times):.2f}, "
              f"max {max(times):.2f}")
        if args.invariants:
            print(f"\n{'invariant':<16}{'ms/dossier':>12}{'evals':>8}{'us/eval':>10}")
            for key, ms, n in invariant_costs(validate, resources, args.repeat)[: args.top]:
                print(f"{key:<16}{ms:>12.3f}{n:>8}{ms * 1000 / max(n, 1):>10.1f}")
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            time_dossier(validate, resources, 5)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
