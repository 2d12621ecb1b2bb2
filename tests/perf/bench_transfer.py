"""Dossier transfer benchmark (#7): dossiers/s end to end, the time split over the steps, and
in the same run the floor of only validating and importing the same dossiers locally.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_transfer.py                    # SQLite, 40 dossiers
    python tests/perf/bench_transfer.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python tests/perf/bench_transfer.py --quick            # CI smoke run (a few dossiers)

Setup: a test PKI, a signed directory and three organisations on one fresh database
(`tests/transfer_helpers.build_world`: organisation scoping keeps them apart), demo children
loaded at the thuiszorg. The relay is the in-process one (a function call): this measures
ekd's own work, not the network. `tests/test_transfer_e2e.py` runs the real processes.

Measured, interleaved in rounds (ABAB, so drift hits both alike):

- end to end: `Patient/$transfer` for a round of children (consent, BSN, validation of the
  dossier, package, sign, encrypt, outbox), then the workers until every transfer is
  `imported` (dispatch, relay, inbox with technical receipt, decrypt, verify, validate,
  match, import, application receipt back to the sender, receipt verified);
- floor: the same dossiers (as the sender holds them) validated and stored with new ids at a
  third organisation, one transaction per dossier, with the same validator and store call
  (`ResourceStore.create_many`) the importer uses.

The split comes from timers wrapped around the functions of each step (sums over the run).
Printed last: dossiers/s for both, the ratio end-to-end/floor, and the issue's targets
(>= 10 dossiers/s end to end; end to end <= 3x the floor).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from ekd.interaction.base import FhirRequest, Services  # noqa: E402
from ekd.interaction.route import handle  # noqa: E402
from ekd.interaction.write import validation_issues  # noqa: E402
from ekd.jgz import demo  # noqa: E402
from ekd.transfer import importer, inbox, outbox, package, seal, sender, status  # noqa: E402
from tests.transfer_helpers import (  # noqa: E402
    BASE,
    GGD,
    OTHER,
    THUISZORG,
    World,
    make_world,
    principal,
)

TIMES: dict[str, float] = defaultdict(float)


def timed(module: Any, name: str, label: str) -> None:
    """Wrap `module.name` so its time adds up under `label`."""
    original: Callable[..., Any] = getattr(module, name)
    TIMES[label] += 0.0  # listed even when never called (the sender skips stamped versions)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - start

    setattr(module, name, wrapper)


def instrument() -> None:
    timed(sender, "check_consent", "sender: consent + BSN")
    timed(sender, "validation_issues", "sender: validate")
    timed(package, "build", "sender: package")
    timed(seal, "sign_bundle", "sender: sign")
    timed(seal, "encrypt", "sender: encrypt")
    timed(sender, "queue", "sender: outbox row")
    timed(outbox, "dispatch", "sender: dispatch")
    timed(inbox, "accept_package", "relay + inbox (technical receipt)")
    timed(seal, "decrypt", "receiver: decrypt")
    timed(seal, "verify_bundle", "receiver: verify")
    timed(importer, "validation_issues", "receiver: validate")
    timed(importer, "_import", "receiver: match + import")
    timed(importer, "_finish", "receiver: receipt + audit")
    timed(inbox, "apply_receipt", "sender: apply receipts")


def load(world: World, children: int, seed: int) -> list[str]:
    services = world.orgs[THUISZORG]
    handle(services, FhirRequest(method="POST", base=BASE, body=demo.shared_bundle(),
                                 principal=principal(THUISZORG)))
    ids = []
    for bundle in demo.generate(children, seed=seed):
        # no objections: every child must arrive (objections are tested elsewhere)
        bundle["entry"] = [e for e in bundle["entry"]
                           if not (e["resource"]["resourceType"] == "Consent"
                                   and e["resource"].get("provision", {}).get("type") == "deny")]
        resp = handle(services, FhirRequest(method="POST", base=BASE, body=bundle,
                                            principal=principal(THUISZORG)))
        ids += [e["response"]["location"].split("/")[1] for e in (resp.body or {})["entry"]
                if e["response"].get("location", "").startswith("Patient/")]
    return ids


def dossier(services: Services, patient_id: str) -> list[dict]:
    resp = handle(services, FhirRequest(method="GET", base=BASE, type="Patient", id=patient_id,
                                        operation="everything", principal=principal(THUISZORG)))
    return [e["resource"] for e in (resp.body or {})["entry"]]


def end_to_end(world: World, patients: list[str]) -> float:
    services = world.orgs[THUISZORG]
    start = time.perf_counter()
    ids = []
    for patient_id in patients:
        resp = handle(services, FhirRequest(
            method="POST", base=BASE, type="Patient", id=patient_id, operation="transfer",
            principal=principal(THUISZORG), body={"resourceType": "Parameters", "parameter": [
                {"name": "recipient", "valueString": GGD}]}))
        assert resp.status == 202, resp.body
        ids.append(next(p["valueString"] for p in (resp.body or {})["parameter"]
                        if p["name"] == "transfer"))
    world.pump(rounds=10_000)
    elapsed = time.perf_counter() - start
    states = {status.transfer_view(services, THUISZORG, i)["state"] for i in ids}  # type: ignore[index]
    assert states == {"imported"}, states
    return elapsed


def floor(world: World, dossiers: list[list[dict]]) -> float:
    services = world.orgs[OTHER]
    start = time.perf_counter()
    for resources in dossiers:
        for resource in resources:
            errors = [i for i in validation_issues(services, resource)
                      if i.severity in ("error", "fatal")]
            assert not errors, errors[0].diagnostics
        with services.db.write() as conn:
            # one batch, as the importer stores a dossier
            services.store(conn, OTHER).create_many(
                [(r["resourceType"], new_id, {**r, "id": new_id})
                 for r in resources for new_id in (str(uuid.uuid4()),)], method="PUT")
    return time.perf_counter() - start


def report(label: str, n: int, e2e_time: float, floor_time: float) -> None:
    """The closing lines: both rates, their ratio, and the issue's targets."""
    e2e_rate, floor_rate = n / e2e_time, n / floor_time
    print(f"\n{label}: {e2e_rate:6.2f} dossiers/s ({e2e_time * 1000 / n:.0f} ms each)  "
          f"target >= 10: {'met' if e2e_rate >= 10 else 'NOT met'}")
    print(f"floor (validate + import locally): {floor_rate:6.2f} dossiers/s "
          f"({floor_time * 1000 / n:.0f} ms each)")
    ratio = e2e_time / floor_time
    print(f"ratio end-to-end / floor: {ratio:.2f}  target <= 3: "
          f"{'met' if ratio <= 3 else 'NOT met'}")


@contextlib.contextmanager
def world_on(database_url: str | None) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="ekd-bench-transfer-") as tmp:
        folder = Path(tmp)
        if database_url:
            from tests.db_helpers import scratch_database

            with scratch_database(database_url, "ekd_bench_transfer") as url:
                yield make_world(url, folder)
        else:
            yield make_world(f"sqlite:///{folder / 'ekd.db'}", folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (a scratch database "
                                               "is made on it); default SQLite in a temp dir")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 children, 2 rounds")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.children, args.rounds = 4, 2
    per_round = max(1, args.children // args.rounds)
    with world_on(args.database_url) as world:
        print(f"loading {args.children} demo children …", file=sys.stderr)
        patients = load(world, args.children, args.seed)
        dossiers = [dossier(world.orgs[THUISZORG], p) for p in patients]
        sizes = sorted(len(d) for d in dossiers)
        instrument()
        e2e_time = floor_time = 0.0
        for r in range(args.rounds):
            chunk = slice(r * per_round, (r + 1) * per_round)
            e2e_time += end_to_end(world, patients[chunk])
            floor_time += floor(world, dossiers[chunk])
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        n = per_round * args.rounds
        backend = "PostgreSQL" if args.database_url else "SQLite"
        print(f"\nbackend {backend}; {n} dossiers, {min(sizes)}-{max(sizes)} resources "
              f"(median {sizes[len(sizes) // 2]}, mean {sum(sizes) / len(sizes):.0f})")
        print("\ntime split of the end-to-end run (sums over all dossiers; nested steps "
              "overlap: validate/package/sign/encrypt happen inside $transfer, "
              "decrypt/verify/validate before import):")
        for label, seconds in TIMES.items():
            print(f"  {label:<36} {seconds * 1000 / n:8.1f} ms/dossier")
        report("end to end", n, e2e_time, floor_time)


if __name__ == "__main__":
    main()
