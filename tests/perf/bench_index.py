"""Search indexing benchmark: the FHIRPath engine alone next to the walkers, in one run.

Run from the repository root with the project's virtualenv::

    python tests/perf/bench_index.py                # demo dossiers of 3 children, 15 rounds
    python tests/perf/bench_index.py --children 5 --rounds 30 --examples

What is timed: `Indexer(parameters, fast=False)` (every expression through the FHIRPath engine,
what indexing did before `ekd.search.walk`) and `Indexer(parameters)` (walkers for the simple
expressions, the engine for the rest) on the resources of demo dossiers
(`ekd.jgz.demo.generate`, ~200 resources per child) with R4's and the JGZ search parameters.
`--examples` adds the official R4 examples. No database: rows are made, not written.

Noise: the machine is shared. Rounds alternate old and new and each keeps its fastest round,
so both see the same conditions. The two indexers are checked to give the same rows first.
The ratio is the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ekd.jgz.demo import generate  # noqa: E402
from ekd.search.index import Indexer  # noqa: E402
from ekd.search.parameters import SearchParameters  # noqa: E402


def parameters() -> SearchParameters:
    params = SearchParameters()
    for f in sorted((ROOT / "profiles").glob("SearchParameter-*.json")):
        params.add(json.loads(f.read_text(encoding="utf-8")))
    return params


def best_of(rounds: int, runs: dict[str, Callable[[], None]]) -> dict[str, float]:
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():  # warm-up: caches, compiled tables
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--children", type=int, default=3, help="demo dossiers (default 3)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--examples", action="store_true", help="also the R4 examples")
    args = ap.parse_args()

    params = parameters()
    old, new = Indexer(params, fast=False), Indexer(params)
    dossiers = [[e["resource"] for e in b["entry"]]
                for b in generate(args.children, seed=args.seed)]
    sets = {"dossier": [r for d in dossiers for r in d]}
    if args.examples:
        from examples_corpus import load_corpus

        sets["examples"] = [r for _, r in load_corpus().examples]

    print(f"load average {os.getloadavg()[0]:.2f}; {len(params)} search parameters; "
          f"{args.rounds} rounds, fastest kept", file=sys.stderr)
    ratio = 0.0
    for label, resources in sets.items():
        for r in resources:
            if old(r) != new(r):
                raise SystemExit(f"rows differ for {r['resourceType']}/{r.get('id')}")

        def run(ix: Indexer, rs: list[dict] = resources) -> Callable[[], None]:
            def go() -> None:
                for r in rs:
                    ix(r)
            return go

        best = best_of(args.rounds, {"old": run(old), "new": run(new)})
        n = len(resources)
        print(f"{label}: {n} resources")
        for name in ("old", "new"):
            line = f"  {name} (fast={name == 'new'}): {best[name] * 1e3 / n:.4f} ms/resource"
            if label == "dossier":
                line += f", {best[name] * 1e3 / len(dossiers):.2f} ms per dossier " \
                        f"(avg {n / len(dossiers):.0f} resources)"
            print(line)
        if label == "dossier":
            ratio = best["old"] / best["new"]
        else:
            print(f"  ratio old/new: {best['old'] / best['new']:.2f}x")
    print(f"ratio old/new (dossier indexing): {ratio:.2f}x")


if __name__ == "__main__":
    main()
