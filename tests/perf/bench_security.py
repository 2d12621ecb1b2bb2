"""Security overhead benchmark (#6): reads, searches and creates with authentication,
authorisation and NEN 7513 audit on, next to ekd as it was before #6.

Run from the repository root with the project's virtualenv active::

    python tests/perf/bench_security.py                      # both backends, 1,000 patients
    python tests/perf/bench_security.py --backend postgresql --patients 2000 --requests 2000
    python tests/perf/bench_security.py --quick              # CI smoke run (< 1 minute)

Two servers per backend, on fresh databases of the same backend, with the same data:

- ``baseline``: ``ekd serve`` of the last commit before #6 (``--baseline-rev``, default
  e61a9da: no tokens, no scoping, no audit), extracted with ``git archive`` into a temp folder
  (or ``--baseline-source DIR``) and run with that folder first on PYTHONPATH. Which ``ekd``
  package a subprocess imports is checked (and printed) before anything is measured.
- ``current``: ``ekd serve`` of this checkout in development mode, every request with the
  ``Authorization: Bearer`` token it prints (``--dev-role system``: a machine client allowed
  everything in its organisation), so every read and search writes a hash-chained audit
  record before the response, and every write one in its own transaction.

Both are loaded through the API (transaction Bundles: N patients with K Observations each,
byte-for-byte the same), then measured with one sequential httpx client per server
(keep-alive), INTERLEAVED: every operation runs in batches, baseline and current alternate
batch by batch (ABBA order), with the same parameters in the same order on both, so drift on
a shared machine hits both alike. Operations: read (``GET Patient/{id}``), search by BSN
(``GET Patient?identifier=system|value``), a child's Observations sorted by date
(``GET Observation?subject=Patient/{id}&_sort=date``) and create (``POST Patient``).

Reported per backend and operation: p50, p95, mean latency, requests/s (requests over the
time spent in that server's batches), and current/baseline ratios, with the issue's target
(read overhead at most 25%) marked. Then the audit records the current server wrote (rows of
``audit_event`` by subtype) and a sanity line: the baseline answers a read without a token,
the current server answers 401. Progress goes to stderr; the tables are the last thing on
stdout. Servers, scratch databases and temp folders are removed, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
from _load import FHIR_JSON, key_from_location, percentile
from _servers import (
    HOST,
    REPO_ROOT,
    ScratchDatabase,
    ServerProcess,
    ekd_server,
    free_port,
    log,
    postgres_available,
    running,
)
from _workload import BSN_SYSTEM, BsnGenerator, _observation, _patient
from bench_core import sigterm_as_exit, table
from bench_search import wait_until_idle

BASELINE_REV = "e61a9da"
#: The issue's target: reads at most 25% slower with security on.
READ_TARGET = 1.25
OPS = ("read", "search-bsn", "search-obs", "create")
OP_TITLES = {
    "read": "GET Patient/{id}",
    "search-bsn": "GET Patient?identifier=<bsn-system>|<bsn>",
    "search-obs": "GET Observation?subject=Patient/{id}&_sort=date",
    "create": "POST Patient",
}
PATIENTS_PER_BUNDLE = 10
OBS_CODES = (("8302-2", "Body height", "cm", 75.0), ("29463-7", "Body weight", "kg", 10.0))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- the data


@dataclass
class Data:
    """The same documents for both servers."""

    bundles: list[bytes]
    #: per bundle, the entry index of each patient (in bundle order)
    patient_entries: list[list[int]]
    bsns: list[str]
    obs_per_patient: int
    #: bodies for the create test (new BSNs)
    new_patients: list[bytes]


def make_data(patients: int, obs: int, creates: int, seed: int) -> Data:
    rng = random.Random(seed)
    bsns_gen = BsnGenerator(rng)
    ref = dt.date(2025, 6, 1)
    bundles: list[bytes] = []
    entries_of: list[list[int]] = []
    bsns: list[str] = []
    for start in range(0, patients, PATIENTS_PER_BUNDLE):
        entries: list[dict[str, Any]] = []
        idx: list[int] = []
        for n in range(start, min(start + PATIENTS_PER_BUNDLE, patients)):
            birth = ref - dt.timedelta(days=rng.randrange(30, 4 * 365))
            patient = _patient(rng, bsns_gen, birth, n)
            bsns.append(patient["identifier"][0]["value"])
            urn = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}"
            idx.append(len(entries))
            entries.append({"fullUrl": urn, "resource": patient,
                            "request": {"method": "POST", "url": "Patient"}})
            for k in range(obs):
                code, display, unit, base = OBS_CODES[k % len(OBS_CODES)]
                when = dt.datetime.combine(birth + dt.timedelta(days=30 * (k + 1)),
                                           dt.time(9, rng.randrange(60)), dt.UTC)
                o = _observation(code, display, round(base * (1 + rng.gauss(0, 0.05)), 1), unit,
                                 when.isoformat())
                o["subject"] = {"reference": urn}
                entries.append({"fullUrl": f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128))}",
                                "resource": o,
                                "request": {"method": "POST", "url": "Observation"}})
        bundles.append(orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries}))
        entries_of.append(idx)
    new = []
    for n in range(creates):
        birth = ref - dt.timedelta(days=rng.randrange(30, 4 * 365))
        new.append(orjson.dumps(_patient(rng, bsns_gen, birth, patients + n)))
    return Data(bundles, entries_of, bsns, obs, new)


# --------------------------------------------------------------------------- servers


def baseline_server(source: Path, url: str, workdir: Path, label: str,
                    log_level: str | None) -> ServerProcess:
    """`python -m ekd serve` of the baseline tree: that tree first on sys.path and as cwd."""
    port = free_port()
    env = baseline_env(source, url)
    argv = [sys.executable, "-m", "ekd", "serve", "--host", HOST, "--port", str(port),
            "--database-url", url]
    if log_level:
        argv += ["--log-level", log_level]
    return ServerProcess(label, argv, port, f"http://{HOST}:{port}/fhir/metadata",
                         workdir / f"{label}.log", env=env, cwd=source)


def baseline_env(source: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKD_")}
    env["EKD_DATABASE_URL"] = url
    env["EKD_JGZ_ENFORCE"] = "false"
    env["PYTHONPATH"] = str(source)
    return env


def current_server(url: str, workdir: Path, label: str, log_level: str | None) -> ServerProcess:
    server = ekd_server(url, workdir, label)
    if log_level:
        server.argv += ["--log-level", log_level]
    return server


def check_baseline_import(source: Path) -> str:
    """The `ekd` package a baseline subprocess imports; refuse to go on if it is not `source`."""
    env = baseline_env(source, "sqlite://")
    out = subprocess.run([sys.executable, "-c", "import ekd; print(ekd.__file__)"], env=env,
                         cwd=source, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"the baseline subprocess imports ekd from {out}, not from {source}")
    return out


@contextlib.contextmanager
def baseline_tree(args: argparse.Namespace) -> Iterator[Path]:
    """`--baseline-source`, or `git archive <rev>` of this repository into a temp folder."""
    if args.baseline_source:
        yield Path(args.baseline_source).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ekd-baseline-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", args.baseline_rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        log(f"baseline {args.baseline_rev} extracted to {tmp}")
        yield Path(tmp)


# --------------------------------------------------------------------------- one side


@dataclass
class Side:
    name: str
    server: ServerProcess
    token: str | None
    client: httpx.Client = field(init=False)
    base: str = field(init=False)
    patient_ids: list[str] = field(default_factory=list)
    lat: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)
    sent: int = 0

    def open(self) -> None:
        self.base = f"http://{HOST}:{self.server.port}/fhir"
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.client = httpx.Client(timeout=120, headers=headers, limits=limits)

    def request(self, method: str, path: str, content: bytes | None = None) -> httpx.Response:
        self.sent += 1
        return self.client.request(method, f"{self.base}/{path}", content=content)

    def load(self, data: Data) -> None:
        t0 = time.perf_counter()
        for bundle, idx in zip(data.bundles, data.patient_entries, strict=True):
            r = self.request("POST", "", bundle)
            if r.status_code != 200:
                raise RuntimeError(f"{self.name}: transaction -> HTTP {r.status_code}: "
                                   f"{r.text[:300]}")
            entries = r.json().get("entry") or []
            for i in idx:
                key = key_from_location((entries[i].get("response") or {}).get("location"))
                if key is None or key[0] != "Patient":
                    raise RuntimeError(f"{self.name}: no Patient location in entry {i}")
                self.patient_ids.append(key[1])
        n = sum(len(i) for i in data.patient_entries) * (1 + data.obs_per_patient)
        log(f"{self.name}: loaded {n:,} resources in {time.perf_counter() - t0:.1f}s")

    def run_batch(self, op: str, jobs: list[Any], measure: bool) -> None:
        lat = self.lat.setdefault(op, [])
        t_start = time.perf_counter()
        for job in jobs:
            method, path, body, expect = self.job(op, job)
            t0 = time.perf_counter()
            try:
                r = self.request(method, path, body)
                status, text = r.status_code, ""
                if status != expect:
                    text = r.text[:200]
            except httpx.HTTPError as e:
                status, text = 0, f"{type(e).__name__}: {e}"
            dt_ms = (time.perf_counter() - t0) * 1000
            if status != expect:
                if measure:
                    self.errors[op] = self.errors.get(op, 0) + 1
                self.first_error.setdefault(op, f"{method} {path} -> {status} {text}")
                continue
            if measure:
                lat.append(dt_ms)
        if measure:
            self.wall[op] = self.wall.get(op, 0.0) + time.perf_counter() - t_start

    def job(self, op: str, job: Any) -> tuple[str, str, bytes | None, int]:
        if op == "read":
            return "GET", f"Patient/{self.patient_ids[job]}", None, 200
        if op == "search-bsn":
            return "GET", f"Patient?identifier={quote(BSN_SYSTEM + '|' + job, safe='')}", None, 200
        if op == "search-obs":
            return ("GET", f"Observation?subject=Patient/{self.patient_ids[job]}&_sort=date",
                    None, 200)
        if op == "create":
            return "POST", "Patient", job, 201
        raise ValueError(op)


# --------------------------------------------------------------------------- measuring


def jobs_for(op: str, data: Data, n: int, rng: random.Random, creates: Iterator[bytes]
             ) -> list[Any]:
    if op in ("read", "search-obs"):
        return [rng.randrange(len(data.bsns)) for _ in range(n)]
    if op == "search-bsn":
        return [rng.choice(data.bsns) for _ in range(n)]
    return [next(creates) for _ in range(n)]


def check_answers(a: Side, b: Side, data: Data) -> str:
    """Both servers give the same answers (a sample): same matches for both searches."""
    for n in range(0, len(data.bsns), max(1, len(data.bsns) // 5)):
        got = []
        for side in (a, b):
            r1 = side.request("GET", side.job("search-bsn", data.bsns[n])[1]).json()
            r2 = side.request("GET", side.job("search-obs", n)[1]).json()
            m1 = [e["resource"]["id"] for e in r1.get("entry") or []]
            m2 = [e["resource"]["effectiveDateTime"] for e in r2.get("entry") or []]
            if m1 != [side.patient_ids[n]] or len(m2) != data.obs_per_patient:
                raise RuntimeError(f"{side.name}: unexpected answer for patient {n}: "
                                   f"{m1} / {len(m2)} observations")
            if m2 != sorted(m2):
                raise RuntimeError(f"{side.name}: Observations not sorted by date")
            got.append(m2)
        if got[0] != got[1]:
            raise RuntimeError(f"different Observations for patient {n}: {got}")
    return "same answers on both (sampled)"


def interleaved(op: str, a: Side, b: Side, jobs: list[Any], warm: list[Any], batch: int
                ) -> None:
    """Warm-up, then batches in ABBA order: a drift (or a busy neighbour) hits both alike."""
    for side in (a, b):
        side.run_batch(op, warm, measure=False)
    for k, start in enumerate(range(0, len(jobs), batch)):
        chunk = jobs[start:start + batch]
        for side in ((a, b) if k % 2 == 0 else (b, a)):
            side.run_batch(op, chunk, measure=True)


@dataclass
class Stats:
    n: int
    errors: int
    p50: float | None
    p95: float | None
    mean: float | None
    rate: float | None
    first_error: str | None

    @classmethod
    def of(cls, side: Side, op: str) -> Stats:
        lat = sorted(side.lat.get(op) or [])
        wall = side.wall.get(op) or 0.0
        return cls(len(lat), side.errors.get(op, 0), percentile(lat, 50), percentile(lat, 95),
                   statistics.fmean(lat) if lat else None,
                   len(lat) / wall if lat and wall else None, side.first_error.get(op))


@dataclass
class BackendResult:
    backend: str
    stats: dict[str, dict[str, Stats]] = field(default_factory=dict)  # op -> side -> stats
    audit: dict[str, int] = field(default_factory=dict)
    audit_total: int = 0
    token_requests: int = 0
    audit_expected: int = 0
    sanity: str = ""
    answers: str = ""
    resources: int = 0
    load_before: str = ""
    load_after: str = ""
    na: str | None = None
    #: why the backend was not measured at all (no PostgreSQL): not a failure
    skipped: str | None = None


def count_audit(url: str) -> dict[str, int]:
    sql = "SELECT subtype, count(*) FROM audit_event GROUP BY subtype ORDER BY 2 DESC"
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            rows = conn.execute(sql).fetchall()
    return {str(k): int(v) for k, v in rows}


def sanity(a: Side, b: Side) -> str:
    """Without a token: the baseline answers a read, the current server says 401."""
    path = f"Patient/{a.patient_ids[0]}"
    ra = httpx.get(f"{a.base}/{path}", headers={"Accept": FHIR_JSON}, timeout=30)
    rb = httpx.get(f"{b.base}/Patient/{b.patient_ids[0]}", headers={"Accept": FHIR_JSON},
                   timeout=30)
    rm = httpx.get(f"{b.base}/metadata", headers={"Accept": FHIR_JSON}, timeout=30)
    ok = ra.status_code == 200 and rb.status_code == 401 and rm.status_code == 200
    text = (f"without a token: baseline GET Patient -> {ra.status_code}, current GET Patient "
            f"-> {rb.status_code}, current GET metadata -> {rm.status_code}")
    if not ok:  # reported (and the exit code says so); the figures are still measured
        log(f"SANITY CHECK FAILED: {text}; current server log:\n{b.server.log_tail(40)}")
        return "FAILED: " + text
    return text + " (as expected)"


def run_backend(args: argparse.Namespace, backend: str, source: Path, data: Data, tmp: Path
                ) -> BackendResult:
    res = BackendResult(backend, load_before=load_avg())
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url_a = f"sqlite:///{tmp / 'baseline.db'}"
            url_b = f"sqlite:///{tmp / 'current.db'}"
        else:
            admin = f"postgresql://{args.pg}/postgres"
            reason = postgres_available(admin)
            if reason:
                res.na = res.skipped = reason
                return res
            url_a = stack.enter_context(ScratchDatabase(admin, "secbase")).sqlalchemy_url(args.pg)
            url_b = stack.enter_context(ScratchDatabase(admin, "seccur")).sqlalchemy_url(args.pg)
        srv_a = baseline_server(source, url_a, tmp, f"baseline-{backend}", args.log_level)
        srv_b = current_server(url_b, tmp, f"current-{backend}", args.log_level)
        stack.enter_context(running(srv_a, timeout_s=args.start_timeout))
        stack.enter_context(running(srv_b, timeout_s=args.start_timeout))
        a = Side("baseline", srv_a, None)
        b = Side("current", srv_b, srv_b.token())
        a.open()
        b.open()
        stack.callback(a.client.close)
        stack.callback(b.client.close)

        # load both at once (not measured): two client threads, one per server
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(side.load, data) for side in (a, b)]:
                f.result()
        res.resources = len(data.bsns) * (1 + data.obs_per_patient)
        if backend == "postgresql":
            # statistics as fresh as the data on both, as bench_search does: right after a
            # bulk load autovacuum has not analysed yet, and the current server's
            # org-scoped search then gets a pathological plan (seconds per request)
            import psycopg

            for url in (url_a, url_b):
                with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                                     autocommit=True) as conn:
                    conn.execute("ANALYZE")
        for srv in (srv_a, srv_b):
            wait_until_idle(srv)
        res.answers = check_answers(a, b, data)
        res.sanity = sanity(a, b)
        log(f"{backend}: {res.sanity}")

        rng = random.Random(args.seed)
        creates = iter(data.new_patients)
        for op in OPS:
            jobs = jobs_for(op, data, args.requests, rng, creates)
            warm = jobs_for(op, data, args.warmup, rng, creates)
            log(f"{backend} {op}: {len(jobs)} requests per server, batches of {args.batch}, "
                f"interleaved; load avg {load_avg()}")
            interleaved(op, a, b, jobs, warm, args.batch)
            res.stats[op] = {s.name: Stats.of(s, op) for s in (a, b)}
            sa, sb = res.stats[op]["baseline"], res.stats[op]["current"]
            log(f"  p50 {fmt(sa.p50)} -> {fmt(sb.p50)} ms, p95 {fmt(sa.p95)} -> {fmt(sb.p95)} "
                f"ms" + (f"; errors {sa.errors}/{sb.errors}: {sa.first_error or sb.first_error}"
                         if sa.errors or sb.errors else ""))
        res.token_requests = b.sent
        # one record per request sent with the token, plus one per transaction entry beyond
        # the first (a transaction's entries are audited one by one)
        res.audit_expected = b.sent + sum(
            len(i) * (1 + data.obs_per_patient) - 1 for i in data.patient_entries)
        res.audit = count_audit(url_b)
        res.audit_total = sum(res.audit.values())
        res.load_after = load_avg()
    return res


# --------------------------------------------------------------------------- output


def fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def render(args: argparse.Namespace, results: list[BackendResult], meta: dict[str, Any]) -> str:
    lines = [
        f"ekd security overhead benchmark (#6): baseline {meta['baseline']} vs current "
        f"{meta['current']}",
        f"{args.patients:,} patients x (1 + {args.obs} Observations) per server, "
        f"{args.requests:,} measured requests per operation and server (+{args.warmup} "
        f"warm-up), batches of {args.batch} interleaved ABBA, one sequential httpx client "
        f"(keep-alive) per server; {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"load average: start {meta['load_start']}, end {meta['load_end']}",
        "current = every request with a bearer token (dev role system): token check, "
        "organisation scoping, permission matrix, audit record per request",
    ]
    for r in results:
        lines += ["", f"== {r.backend}"]
        if r.na:
            lines.append(f"n/a: {r.na}")
            continue
        lines += [f"data: {r.resources:,} resources per server; {r.answers}; "
                  f"load average {r.load_before} -> {r.load_after}",
                  f"sanity: {r.sanity}",
                  f"audit: {r.audit_total:,} audit_event rows written by the current server for "
                  f"{r.token_requests:,} token requests it was sent (expected "
                  f"{r.audit_expected:,}: one per request, one per transaction entry; "
                  + ", ".join(f"{k} {v:,}" for k, v in r.audit.items()) + ")"]
        errs = [f"{op} {side}: {s.errors} errors, first: {s.first_error}"
                for op, by in r.stats.items() for side, s in by.items() if s.errors]
        lines += [f"ERRORS: {e}" for e in errs]
    header = ("backend", "operation", "server", "n", "p50 ms", "p95 ms", "mean ms", "req/s")
    rows = []
    for r in results:
        for op, by in r.stats.items():
            for side in ("baseline", "current"):
                s = by[side]
                rows.append((r.backend, op, side, f"{s.n:,}", fmt(s.p50), fmt(s.p95),
                             fmt(s.mean), fmt(s.rate, 0)))
    lines += ["", "figures (latency as the client sees it, one request at a time):", "",
              *table(header, rows)]
    rh = ("backend", "operation", "p50 ratio", "p95 ratio", "mean ratio", "req/s ratio",
          "target")
    rrows = []
    for r in results:
        for op, by in r.stats.items():
            sa, sb = by["baseline"], by["current"]
            p50 = ratio(sa.p50, sb.p50)
            target = ""
            if op == "read":
                target = ("n/a" if p50 is None else
                          f"<= {READ_TARGET:.2f}: {'met' if p50 <= READ_TARGET else 'NOT met'}")
            rrows.append((r.backend, op, fmt(p50), fmt(ratio(sa.p95, sb.p95)),
                          fmt(ratio(sa.mean, sb.mean)), fmt(ratio(sa.rate, sb.rate)), target))
    lines += ["", "ratios current / baseline (latency: > 1 is slower; req/s: < 1 is slower; "
              "read target on p50):", "", *table(rh, rrows)]
    return "\n".join(lines)


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no", "--", "ekd"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"
    return f"{rev}{' + uncommitted changes in ekd/' if dirty else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--patients", type=int, default=None,
                   help="patients per server (default 1000; 40 with --quick)")
    p.add_argument("--obs", type=int, default=5, help="Observations per patient (default 5)")
    p.add_argument("--requests", type=int, default=None,
                   help="measured requests per operation and server (default 1000; 60 quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="unmeasured requests per operation first (default 50; 10 quick)")
    p.add_argument("--batch", type=int, default=None,
                   help="requests per interleaved batch (default 50; 20 quick)")
    p.add_argument("--quick", action="store_true", help="CI smoke run (< 1 minute)")
    p.add_argument("--baseline-rev", default=BASELINE_REV,
                   help=f"commit to compare with (default {BASELINE_REV}, the last before #6)")
    p.add_argument("--baseline-source", default=None,
                   help="an ekd source tree to use as the baseline instead of --baseline-rev")
    p.add_argument("--log-level", default=None,
                   help="uvicorn/ekd log level for both servers (default: ekd serve's, info; "
                        "the current server's access log writes a line per request at info)")
    p.add_argument("--pg", default="postgres@127.0.0.1:5432",
                   help="PostgreSQL user@host:port for scratch databases")
    p.add_argument("--seed", type=int, default=20250606)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    q = args.quick
    args.patients = args.patients or (40 if q else 1000)
    args.requests = args.requests or (60 if q else 1000)
    args.warmup = args.warmup if args.warmup is not None else (10 if q else 50)
    args.batch = args.batch or (20 if q else 50)
    if min(args.patients, args.requests, args.batch) < 1 or args.obs < 1:
        p.error("--patients, --obs, --requests and --batch must be positive")
    return args


def write_json(path: Path, results: list[BackendResult], meta: dict[str, Any]) -> None:
    doc = {"meta": meta, "backends": [
        {"backend": r.backend, "na": r.na, "resources": r.resources, "sanity": r.sanity,
         "audit_rows": r.audit, "token_requests": r.token_requests,
         "audit_expected": r.audit_expected,
         "load_before": r.load_before, "load_after": r.load_after,
         "stats": {op: {side: s.__dict__ for side, s in by.items()}
                   for op, by in r.stats.items()}} for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"figures written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    # the same documents go to both servers (their databases are separate)
    creates = args.requests + args.warmup
    data = make_data(args.patients, args.obs, creates, args.seed)
    meta: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "current": git_describe(), "load_start": load_avg(),
                            "cpus": os.cpu_count(), "python": platform.python_version()}
    if os.getloadavg()[0] > 0.5:
        log(f"WARNING: load average {meta['load_start']}: figures will be noisy")
    results: list[BackendResult] = []
    with sigterm_as_exit(), baseline_tree(args) as source:
        meta["baseline"] = args.baseline_source or args.baseline_rev
        log(f"baseline subprocesses import {check_baseline_import(source)}")
        for backend in backends:
            with tempfile.TemporaryDirectory(prefix=f"ekd-bench-sec-{backend}-") as tmp:
                log(f"=== {backend}")
                try:
                    results.append(run_backend(args, backend, source, data, Path(tmp)))
                except Exception as e:  # the other backend still runs
                    log(f"{backend} failed: {type(e).__name__}: {e}")
                    results.append(BackendResult(backend, na=f"{type(e).__name__}: {e}"[:300]))
    meta["load_end"] = load_avg()
    if args.json:
        write_json(args.json, results, meta)
    sys.stderr.flush()
    print(render(args, results, meta), flush=True)
    measured = [r for r in results if not r.skipped]
    ok = bool(measured) and all(
        not r.na and not r.sanity.startswith("FAILED")
        and all(s.n and not s.errors for by in r.stats.values() for s in by.values())
        for r in measured)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
