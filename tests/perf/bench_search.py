"""Search benchmark: ekd's FHIR search on 100,000 and 1,000,000 demo resources in PostgreSQL,
next to the same questions in hand-written SQL (the floor) and to sekmet-fhir on a subset.

Two steps, because loading a million resources takes the better part of an hour::

    # 1. load (resumable: tops up what is there; a bigger database can start as a copy)
    python tests/perf/bench_search.py load --db ekd_bench_100k --resources 100000
    python tests/perf/bench_search.py load --db ekd_bench_1m --resources 1000000 \\
        --template ekd_bench_100k
    python tests/perf/bench_search.py load --db ekd_bench_20k --resources 20000
    # 2. measure (both sizes in one run, plus the sekmet-fhir comparison on the 20k subset)
    python tests/perf/bench_search.py run --db ekd_bench_100k --db ekd_bench_1m \\
        --sekmet-db ekd_bench_20k --json search.json
    # CI smoke test (< 2 minutes): a scratch database with a few thousand resources
    python tests/perf/bench_search.py --quick

Loading goes through the API, as `ekd demo-data --url` does: the demo dossiers of
`ekd.jgz.demo` (~180 resources per child) posted as transaction Bundles to `ekd serve`, with
the JGZ profiles enforced (see `_search_load.py`).

What is measured, per database and per query (see `_search_queries.py` for the six queries):

- ekd over HTTP: `ekd serve` (one worker) on 127.0.0.1, one client on the same machine sending
  requests one after another (no concurrency), parameters drawn at random from the data,
  `--warmup` unmeasured requests first. Latency is the full round trip as the client sees it:
  server work + HTTP + the client's own overhead (the stdlib client by default, ~0.15 ms).
- ekd in-process: the same requests through `ekd.interaction.route.handle` plus JSON rendering
  in this process (no HTTP, no socket): how much of the HTTP figure is ekd's own work.
- floor: the same questions in hand-written SQL on ekd's own tables via psycopg, prepared.
- EXPLAIN (ANALYZE, BUFFERS) of every statement ekd sends for queries 1-5 (captured from the
  in-process run), with the scans each one uses.

Progress goes to stderr; the tables are the last thing on stdout (and `--json` writes them).
Nothing here changes the databases it measures; `--quick` drops its scratch database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from _load import (
    CLIENTS,
    Driver,
    Measurement,
    Recorder,
    Transport,
    TransportError,
    bearer,
    make_transport,
)
from _search_load import (
    _sqlite_count,
    count_resources,
    database_exists,
    db_dsn,
    load_demo,
    load_history,
    sqlalchemy_url,
)
from _search_queries import BSN, QUERIES, Params, Query
from _servers import (
    REPO_ROOT,
    SEKMET_VERSION,
    ScratchDatabase,
    cache_dir,
    ekd_server,
    ensure_sekmet_venv,
    log,
    postgres_available,
    running,
    sekmet_server,
)
from bench_core import fmt, sigterm_as_exit, table

#: A relation with more rows than this is "large": a Seq Scan on it is reported.
LARGE_TABLE_ROWS = 10_000
#: The floor target: ekd within this factor of hand-written SQL.
FLOOR_FACTOR = 3.0


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by every process in process group `pgid` (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp; utime and stime are fields 14 and 15 of stat
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_until_idle(server: Any, max_s: float = 90.0) -> float:
    """Wait until the freshly started server stops using CPU by itself.

    Why: `ekd serve` builds the models of every resource type in a background thread after
    start-up (seconds of CPU); requests measured meanwhile share the core with it.
    """
    proc = getattr(server, "proc", None)
    if proc is None or not Path("/proc").exists():
        return 0.0
    t0 = time.perf_counter()
    last = group_cpu_s(proc.pid)
    while time.perf_counter() - t0 < max_s:
        time.sleep(1.0)
        now = group_cpu_s(proc.pid)
        if now - last < 0.05:
            break
        last = now
    waited = time.perf_counter() - t0
    log(f"{server.name}: idle after {waited:.0f}s")
    return waited


def ekd_server_for(args: argparse.Namespace, url: str, tmp: Path, label: str) -> Any:
    """`ekd serve` from this checkout, or from `--ekd-source` (another source tree)."""
    server = ekd_server(url, tmp, label)
    if args.ekd_source:
        assert server.env is not None
        server.env["PYTHONPATH"] = str(args.ekd_source)
    return server


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- results


@dataclass
class QueryResult:
    """Everything measured for one query on one dataset."""

    key: str
    title: str
    target_p95_ms: float | None
    http: Measurement | None = None
    inproc: Measurement | None = None
    #: In-process with every statement planned for its values (plan_cache_mode).
    inproc_custom: Measurement | None = None
    floor: Measurement | None = None
    #: Mean number of match entries (or the count for _summary=count) ekd returned.
    ekd_rows: float | None = None
    floor_rows: float | None = None
    #: Checked parameter sets on which ekd and the floor returned the same number of rows.
    agree: str = ""
    explain: dict[str, Any] | None = None
    na: str | None = None
    #: --extended-stats experiment: in-process latency and EXPLAIN with extended statistics.
    inproc_ext: Measurement | None = None
    explain_ext: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.key, "title": self.title, "target_p95_ms": self.target_p95_ms,
            "in_process_extended_stats": self.inproc_ext.to_dict() if self.inproc_ext else None,
            "explain_extended_stats": self.explain_ext,
            "http": self.http.to_dict() if self.http else None,
            "in_process": self.inproc.to_dict() if self.inproc else None,
            "in_process_custom_plans": (self.inproc_custom.to_dict() if self.inproc_custom
                                        else None),
            "floor": self.floor.to_dict() if self.floor else None,
            "ekd_rows_mean": self.ekd_rows, "floor_rows_mean": self.floor_rows,
            "rows_agree": self.agree, "explain": self.explain, "na": self.na,
        }


@dataclass
class Dataset:
    label: str
    database: str
    resources: int
    size: str
    load_before: str
    load_after: str = ""
    results: list[QueryResult] = field(default_factory=list)

    def by_key(self) -> dict[str, QueryResult]:
        return {r.key: r for r in self.results}


# --------------------------------------------------------------------------- timing helpers


def time_http(base: str, label: str, query: Query, params: list[Params], args: argparse.Namespace
              ) -> Measurement:
    """Sequential GETs (one connection, one at a time) through the shared load driver."""
    def job(client: Transport, p: Params, rec: Recorder) -> None:
        if rec.call(client, "GET", f"{base}/{query.path(p)}", expect=(200,)) is not None:
            rec.resources += 1

    m, _ = Driver(1, args.timeout, args.max_seconds, args.client).run(label, query.key, params,
                                                                       job)
    return m


def fetch_rows(client: Transport, base: str, query: Query, p: Params) -> int:
    """How many matches (or, for _summary=count, the total) one request returns."""
    url = f"{base}/{query.path(p)}"
    try:
        r = client.request("GET", url)
    except TransportError:
        # the server closes a keep-alive connection idle for 5 s (uvicorn's default), e.g.
        # while the previous query was timed on the driver's own connections: reconnect once
        r = client.request("GET", url)
    if r.status != 200:
        raise RuntimeError(f"GET {query.path(p)} -> HTTP {r.status}: {r.text[:300]}")
    body = orjson.loads(r.content)
    if "_summary=count" in query.path(p):
        return int(body.get("total") or 0)
    return sum(1 for e in body.get("entry") or []
               if (e.get("search") or {}).get("mode", "match") == "match")


def timed_loop(label: str, test: str, params: list[Params], fn: Callable[[Params], Any],
               max_seconds: float = 600.0) -> Measurement:
    """Call `fn` once per parameter set, sequentially, and time each call."""
    m = Measurement(label, test)
    t_start = time.perf_counter()
    for p in params:
        if time.perf_counter() - t_start > max_seconds:
            m.note = f"stopped at the {max_seconds:.0f}s limit"
            break
        t0 = time.perf_counter()
        try:
            fn(p)
        except Exception as e:
            m.requests += 1
            m.errors += 1
            m.first_error = m.first_error or f"{type(e).__name__}: {str(e)[:200]}"
            continue
        m.latencies_ms.append((time.perf_counter() - t0) * 1000)
        m.requests += 1
        m.resources += 1
    m.wall_s = time.perf_counter() - t_start
    if not m.resources:
        m.na = m.first_error or "nothing succeeded"
    return m


# --------------------------------------------------------------------------- the floor


class Floor:
    """The same questions as hand-written SQL through psycopg, prepared on first use.

    Prepared statements are planned for their actual values every time
    (`plan_cache_mode = force_custom_plan`): with PostgreSQL's default (`auto`) a prepared
    statement switches to a generic plan after five executions, which for these skewed
    lookups can be 50x slower (see the EXPLAIN section) - the floor is the best the database
    can do, so it keeps the parse/analyse saving of preparing without that risk.
    """

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
        self.conn.execute("SET plan_cache_mode = force_custom_plan")

    def ask(self, query: Query, p: Params) -> int:
        """Run the question; returns the number of rows (or the count) it answers with."""
        bind = query.floor_params(p)
        rows = 0
        with self.conn.cursor() as cur:
            for stmt in query.floor:
                if stmt.only_if_full_page is not None and rows < stmt.only_if_full_page:
                    continue
                cur.execute(stmt.sql, bind, prepare=True)
                fetched = cur.fetchall()
                if stmt.only_if_full_page is not None:
                    break
                if stmt.only_if_full_page is None:
                    rows = len(fetched)
                    if query.key == "q6":
                        rows = int(fetched[0][0])
        return rows if query.page_size is None else min(rows, query.page_size)

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- in-process ekd


class InProcess:
    """ekd's request handling without HTTP: route.handle + JSON rendering, in this process.

    Also records the SQL each request sends (SQLAlchemy `before_cursor_execute`), which is
    what EXPLAIN is run on.
    """

    BASE = "http://127.0.0.1/fhir"

    def __init__(self, url: str, custom_plans: bool = False) -> None:
        from sqlalchemy import event

        from ekd.api.app import build_services
        from ekd.config import Settings

        if custom_plans:  # every statement planned for its values (see Floor)
            sep = "&" if "?" in url else "?"
            url = f"{url}{sep}options=-c%20plan_cache_mode%3Dforce_custom_plan"
        self.services = build_services(Settings.from_env(database_url=url))
        self.captured: list[tuple[str, Any]] | None = None
        engines = [self.services.db.engine]
        extra = getattr(self.services.db, "_autocommit_engine", None)
        if extra is not None:
            engines.append(extra)
        for engine in engines:
            event.listen(engine, "before_cursor_execute", self._capture)

    def _capture(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        if self.captured is not None:
            self.captured.append((statement, parameters))

    def ask(self, path_and_query: str) -> bytes:
        from urllib.parse import parse_qsl

        from ekd.api.formats import render
        from ekd.interaction import route

        path, _, qs = path_and_query.partition("?")
        req = route.parse_path("GET", path, parse_qsl(qs, keep_blank_values=True), self.BASE)
        resp = route.handle(self.services, req)
        if resp.status != 200 or resp.body is None:
            raise RuntimeError(f"in-process GET {path_and_query} -> {resp.status}")
        return render(resp.body, "json", pretty=False)

    def capture(self, path_and_query: str) -> list[tuple[str, Any]]:
        self.captured = []
        try:
            self.ask(path_and_query)
            return self.captured
        finally:
            self.captured = None

    def close(self) -> None:
        self.services.db.engine.dispose()


# --------------------------------------------------------------------------- EXPLAIN


def _walk(plan: dict, out: list[dict]) -> None:
    out.append(plan)
    for child in plan.get("Plans") or []:
        _walk(child, out)


def _prepared_form(sql_text: str, params: dict) -> tuple[str, list]:
    """`%(name)s` placeholders -> `$n`, and the values in that order (for PREPARE)."""
    names: list[str] = []

    def number(m: re.Match) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return (re.sub(r"%\((\w+)\)s", number, sql_text).replace("%%", "%"),
            [params[n] for n in names])


def _scans(doc: Any, table_rows: dict[str, int]) -> list[dict]:
    if isinstance(doc, str | bytes):
        doc = orjson.loads(doc)
    nodes: list[dict] = []
    _walk(doc[0]["Plan"], nodes)
    scans = []
    for n in nodes:
        kind = n.get("Node Type", "")
        if "Scan" not in kind:
            continue
        rel = n.get("Relation Name") or ""
        scans.append({"node": kind, "relation": rel, "index": n.get("Index Name"),
                      "rows": n.get("Actual Rows"), "loops": n.get("Actual Loops"),
                      "large": table_rows.get(rel, 0) > LARGE_TABLE_ROWS})
    return scans


def _generic_plans(conn: Any) -> int:
    """How often the prepared statement ran with a generic plan (PostgreSQL >= 14)."""
    row = conn.execute("SELECT generic_plans FROM pg_prepared_statements "
                       "WHERE name = 'bench_stmt'", prepare=False).fetchone()
    return int(row[0]) if row else 0


def explain_statements(inproc: InProcess, dsn: str, path: str, table_rows: dict[str, int]
                       ) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) every statement one request sends, twice.

    - custom: the statement with its values, as PostgreSQL plans it the first times;
    - prepared: what a pooled connection runs later on. psycopg prepares a statement on the
      server after 5 executions (SQLAlchemy keeps its default `prepare_threshold`), and with
      `plan_cache_mode = auto` PostgreSQL then may switch to a generic plan (one for all
      values) after another 5. Reproduced with PREPARE + 5 x EXECUTE + EXPLAIN EXECUTE.
    """
    import psycopg
    from psycopg import sql as pgsql

    statements = inproc.capture(path)
    summary: dict[str, Any] = {"path": path, "statements": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql_text, params in statements:
            if not sql_text.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            params = params or {}
            custom = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql_text,
                                  params, prepare=False).fetchone()[0]
            custom_text = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS) " + sql_text, params, prepare=False))
            prepared_sql, values = _prepared_form(sql_text, params)
            args_sql = ", ".join(pgsql.Literal(v).as_string(conn) for v in values)
            execute = f"EXECUTE bench_stmt({args_sql})" if values else "EXECUTE bench_stmt"
            conn.execute(f"PREPARE bench_stmt AS {prepared_sql}", prepare=False)
            try:
                for _ in range(5):
                    conn.execute(execute, prepare=False).fetchall()
                generic_before = _generic_plans(conn)
                prepared = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + execute,
                                        prepare=False).fetchone()[0]
                generic = _generic_plans(conn) > generic_before
                prepared_text = "\n".join(r[0] for r in conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS) " + execute, prepare=False))
            finally:
                conn.execute("DEALLOCATE bench_stmt", prepare=False)
            if isinstance(custom, str | bytes):
                custom = orjson.loads(custom)
            if isinstance(prepared, str | bytes):
                prepared = orjson.loads(prepared)
            summary["statements"].append({
                "sql": " ".join(sql_text.split())[:4000],
                "execution_ms": round(custom[0].get("Execution Time", 0.0), 3),
                "planning_ms": round(custom[0].get("Planning Time", 0.0), 3),
                "prepared_execution_ms": round(prepared[0].get("Execution Time", 0.0), 3),
                "prepared_generic_plan": generic,
                "scans": _scans(custom, table_rows),
                "prepared_scans": _scans(prepared, table_rows),
                "plan": custom_text, "prepared_plan": prepared_text,
            })
    sts = summary["statements"]
    seq = [s for st in sts for s in st["scans"] + st["prepared_scans"]
           if s["node"] == "Seq Scan" and s["large"]]
    summary["seq_scans_on_large_tables"] = sorted({s["relation"] for s in seq})
    summary["indexes"] = sorted({f"{s['index']} ({s['node']})" for st in sts
                                 for s in st["scans"] + st["prepared_scans"] if s["index"]})
    summary["execution_ms_total"] = round(sum(st["execution_ms"] for st in sts), 3)
    summary["prepared_execution_ms_total"] = round(sum(st["prepared_execution_ms"]
                                                       for st in sts), 3)
    summary["generic_plans"] = sum(1 for st in sts if st["prepared_generic_plan"])
    return summary


def table_sizes(dsn: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT relname, reltuples::bigint FROM pg_class "
                            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
                            ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


# --------------------------------------------------------------------------- one dataset


#: The experiment's statistics objects: the index tables' key columns are strongly correlated
#: (type and param fix the system, a param fixes the target type), which the planner, assuming
#: independence, underestimates by orders of magnitude.
EXTENDED_STATS = {
    "bench_ext_search_token": "(dependencies, mcv) ON type, param, system, code FROM search_token",
    "bench_ext_search_reference": "(dependencies, mcv) ON type, param, target_type "
                                  "FROM search_reference",
    "bench_ext_search_date": "(dependencies, mcv) ON type, param FROM search_date",
}


@contextlib.contextmanager
def extended_statistics(dsn: str) -> Iterator[None]:
    """Temporarily add EXTENDED_STATS (and ANALYZE); always removed (and re-ANALYZEd) after."""
    import psycopg

    tables = ("search_token", "search_reference", "search_date")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, spec in EXTENDED_STATS.items():
            conn.execute(f"CREATE STATISTICS IF NOT EXISTS {name} {spec}")
        for t in tables:
            conn.execute(f"ANALYZE {t}")
    try:
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in EXTENDED_STATS:
                conn.execute(f"DROP STATISTICS IF EXISTS {name}")
            for t in tables:
                conn.execute(f"ANALYZE {t}")
        log("extended statistics removed again")


def extended_stats_experiment(args: argparse.Namespace, label: str, url: str, dsn: str,
                              params: dict[str, list[Params]],
                              results: dict[str, QueryResult]) -> None:
    log(f"  {label}: experiment with extended statistics on the index tables")
    sizes = table_sizes(dsn)
    with extended_statistics(dsn):
        inproc = InProcess(url)
        try:
            for q in QUERIES:
                res = results.get(q.key)
                if res is None or res.na is not None:
                    continue
                warm, measured = params[q.key][:args.warmup], params[q.key][args.warmup:]
                for p in warm:
                    inproc.ask(q.path(p))
                res.inproc_ext = timed_loop(f"inproc-ext-{label}", q.key, measured,
                                            lambda p, q=q: inproc.ask(q.path(p)),
                                            args.max_seconds)
                if q.explain:
                    e = explain_statements(inproc, dsn, q.path(measured[0]), sizes)
                    res.explain_ext = {k: e[k] for k in (
                        "execution_ms_total", "prepared_execution_ms_total", "generic_plans",
                        "seq_scans_on_large_tables", "indexes")}
                log(f"  {label} {q.key} in-process with extended statistics: p50 "
                    f"{fmt(res.inproc_ext.pct(50), 2)} ms, p95 "
                    f"{fmt(res.inproc_ext.pct(95), 2)} ms")
        finally:
            inproc.close()


def sample_params(url: str, seed: int, n: int, keys: list[str]) -> dict[str, list[Params]]:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    out = {}
    try:
        with engine.connect() as conn:
            for q in QUERIES:
                if q.key in keys:
                    t0 = time.perf_counter()
                    # q3 and q3s ask about the same months
                    out[q.key] = q.sample(conn, random.Random(f"{seed}:{q.key[:2]}"), n)
                    log(f"  sampled {n} parameter sets for {q.key} "
                        f"({time.perf_counter() - t0:.1f}s)")
    finally:
        engine.dispose()
    return out


def measure_dataset(args: argparse.Namespace, label: str, url: str, dsn: str | None,
                    database: str, tmp: Path) -> Dataset:
    keys = args.queries
    resources = count_resources(dsn) if dsn else _sqlite_count(Path(database))
    size = ""
    if dsn:
        import psycopg

        with psycopg.connect(dsn) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                ).fetchone()[0]
            conn.execute("ANALYZE")  # statistics as fresh as the data, for every run alike
    ds = Dataset(label, database, resources, size, load_avg())
    log(f"=== {label}: {database}, {resources:,} resources ({size}); load avg {ds.load_before}")
    n = args.requests + args.warmup
    params = sample_params(url, args.seed, n, keys)
    results = {q.key: QueryResult(q.key, q.title, q.target_p95_ms) for q in QUERIES
               if q.key in keys}

    # -- ekd over HTTP
    server = ekd_server_for(args, url, tmp, f"ekd-{label}")
    with running(server, timeout_s=args.start_timeout), bearer(server):
        wait_until_idle(server)
        base = f"http://127.0.0.1:{server.port}/fhir"
        client = make_transport(args.client, args.timeout)
        try:
            for q in QUERIES:
                if q.key not in keys:
                    continue
                res = results[q.key]
                warm, measured = params[q.key][:args.warmup], params[q.key][args.warmup:]
                try:
                    rows = [fetch_rows(client, base, q, p) for p in warm]
                except Exception as e:  # reported, the run goes on
                    res.na = f"{type(e).__name__}: {str(e)[:300]}"
                    log(f"  {label} {q.key}: n/a ({res.na})")
                    continue
                res.ekd_rows = sum(rows) / len(rows) if rows else None
                res.http = time_http(base, f"ekd-{label}", q, measured, args)
                log(f"  {label} {q.key} http: p50 {fmt(res.http.pct(50), 2)} ms, p95 "
                    f"{fmt(res.http.pct(95), 2)} ms, {fmt(res.http.rate)} req/s, "
                    f"{res.ekd_rows or 0:.1f} rows"
                    + (f", {res.http.errors} errors: {res.http.first_error}"
                       if res.http.errors else ""))
        finally:
            client.close()

    # -- the floor, in-process ekd, EXPLAIN (PostgreSQL only for floor and EXPLAIN)
    floor = Floor(dsn) if dsn else None
    inproc = InProcess(url) if not args.no_in_process or dsn else None
    custom = InProcess(url, custom_plans=True) if dsn and not args.no_in_process else None
    sizes = table_sizes(dsn) if dsn else {}
    try:
        for q in QUERIES:
            if q.key not in keys:
                continue
            res = results[q.key]
            warm, measured = params[q.key][:args.warmup], params[q.key][args.warmup:]
            if floor is not None:
                floor_rows = [floor.ask(q, p) for p in warm]
                res.floor_rows = sum(floor_rows) / len(floor_rows) if floor_rows else None
                res.floor = timed_loop(f"floor-{label}", q.key, measured,
                                       lambda p, q=q: floor.ask(q, p), args.max_seconds)
                if res.ekd_rows is not None and warm:
                    ekd_rows = [fetch_rows_inproc(inproc, q, p) for p in warm] \
                        if inproc else []
                    same = sum(1 for a, b in zip(ekd_rows, floor_rows, strict=False) if a == b)
                    res.agree = f"{same}/{len(warm)}"
                log(f"  {label} {q.key} floor: p50 {fmt(res.floor.pct(50), 2)} ms, p95 "
                    f"{fmt(res.floor.pct(95), 2)} ms, {res.floor_rows or 0:.1f} rows"
                    + (f" (rows agree with ekd on {res.agree})" if res.agree else ""))
            if inproc is not None and not args.no_in_process and res.na is None:
                for p in warm:
                    inproc.ask(q.path(p))
                res.inproc = timed_loop(f"inproc-{label}", q.key, measured,
                                        lambda p, q=q: inproc.ask(q.path(p)), args.max_seconds)
                log(f"  {label} {q.key} in-process: p50 {fmt(res.inproc.pct(50), 2)} ms, "
                    f"p95 {fmt(res.inproc.pct(95), 2)} ms")
            if custom is not None and res.na is None:
                for p in warm:
                    custom.ask(q.path(p))
                res.inproc_custom = timed_loop(f"inproc-custom-{label}", q.key, measured,
                                               lambda p, q=q: custom.ask(q.path(p)),
                                               args.max_seconds)
                log(f"  {label} {q.key} in-process, custom plans: p50 "
                    f"{fmt(res.inproc_custom.pct(50), 2)} ms, p95 "
                    f"{fmt(res.inproc_custom.pct(95), 2)} ms")
            if dsn and inproc is not None and q.explain and res.na is None:
                try:
                    res.explain = explain_statements(inproc, dsn, q.path(measured[0]), sizes)
                    log(f"  {label} {q.key} EXPLAIN: {len(res.explain['statements'])} "
                        f"statements, seq scans on large tables: "
                        f"{res.explain['seq_scans_on_large_tables'] or 'none'}")
                except Exception as e:  # reported, the run goes on
                    res.explain = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    log(f"  {label} {q.key} EXPLAIN failed: {e}")
    finally:
        if floor is not None:
            floor.close()
        if inproc is not None:
            inproc.close()
        if custom is not None:
            custom.close()
    if dsn and args.extended_stats:
        extended_stats_experiment(args, label, url, dsn, params, results)
    ds.results = [results[k] for k in (q.key for q in QUERIES) if k in results]
    ds.load_after = load_avg()
    return ds


def fetch_rows_inproc(inproc: InProcess | None, q: Query, p: Params) -> int:
    if inproc is None:
        return -1
    body = orjson.loads(inproc.ask(q.path(p)))
    if "_summary=count" in q.path(p):
        return int(body.get("total") or 0)
    return sum(1 for e in body.get("entry") or []
               if (e.get("search") or {}).get("mode", "match") == "match")


# --------------------------------------------------------------------------- sekmet


@dataclass
class PeerRow:
    key: str
    title: str
    ekd: Measurement | None = None
    sekmet: Measurement | None = None
    ekd_rows: float | None = None
    sekmet_rows: float | None = None
    na: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.key, "title": self.title,
                "ekd": self.ekd.to_dict() if self.ekd else None,
                "sekmet": self.sekmet.to_dict() if self.sekmet else None,
                "ekd_rows_mean": self.ekd_rows, "sekmet_rows_mean": self.sekmet_rows,
                "na": self.na}


def sekmet_comparison(args: argparse.Namespace, url: str, dsn: str, tmp: Path
                      ) -> tuple[list[PeerRow], dict[str, Any]]:
    """The same demo children in ekd (``dsn``) and in a fresh sekmet-fhir; the same searches."""
    import httpx
    import psycopg

    from ekd.cli.demo import post_bundles
    from ekd.jgz import demo

    info: dict[str, Any] = {"sekmet_version": SEKMET_VERSION}
    rows = [PeerRow(q.key, q.title) for q in QUERIES if q.key in args.queries]
    try:
        script = ensure_sekmet_venv(Path(args.sekmet_venv))
    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
        for r in rows:
            r.na = f"could not install sekmet-fhir: {e}"
        return rows, info
    with psycopg.connect(dsn) as conn:
        bsn_of = dict(conn.execute(
            "SELECT r.id, t.code FROM resource r JOIN search_token t ON t.resource_pk = r.pk "
            "WHERE r.type = 'Patient' AND t.type = 'Patient' AND t.param = 'identifier' "
            "AND t.system = %s AND NOT r.deleted", (BSN,)).fetchall())
    pool = demo.bsn_pool(args.seed_data)
    index_of = {b: i for i, b in enumerate(pool[0::3])}
    children = sorted(index_of[b] for b in bsn_of.values() if b in index_of)
    info["children"] = len(children)
    info["ekd_resources"] = count_resources(dsn)
    n = args.requests + args.warmup
    params = sample_params(url, args.seed, n, [r.key for r in rows])

    workdir = Path(tempfile.mkdtemp(prefix="sekmet-", dir=tmp))
    server = sekmet_server(script, workdir, log_inbound=False)
    with running(server, timeout_s=args.start_timeout), httpx.Client(timeout=600) as hc:
        wait_until_idle(server)
        base = f"http://127.0.0.1:{server.port}/fhir"
        log(f"sekmet: loading the same {len(children)} children "
            f"({info['ekd_resources']:,} resources in ekd)")
        t0 = time.perf_counter()
        shared = post_bundles(hc, base, [demo.shared_bundle()])
        loaded = post_bundles(hc, base, (demo.child_bundle(i, args.seed_data,
                                                           demo.DEFAULT_REFERENCE_DATE, pool)
                                         for i in children))
        info["sekmet_load_s"] = round(time.perf_counter() - t0, 1)
        # created (201), not the organisations every bundle only matches (ifNoneExist)
        info["sekmet_resources"] = (shared.statuses.get("201", 0)
                                    + loaded.statuses.get("201", 0))
        info["sekmet_rejected"] = shared.rejected + loaded.rejected
        log(f"sekmet: {info['sekmet_resources']:,} resources in {info['sekmet_load_s']}s, "
            f"{info['sekmet_rejected']} bundles rejected")

        # ekd's patient ids -> sekmet's (server-assigned there too), via the BSN
        sek_id: dict[str, str] = {}

        def to_sekmet(p: Params) -> Params:
            if "patient" not in p:
                return p
            ekd_id = p["patient"]
            if ekd_id not in sek_id:
                r = hc.get(f"{base}/Patient", params={"identifier": f"{BSN}|{bsn_of[ekd_id]}"})
                entries = r.json().get("entry") or []
                sek_id[ekd_id] = entries[0]["resource"]["id"] if entries else "missing"
            return {**p, "patient": sek_id[ekd_id]}

        sek_params = {k: [to_sekmet(p) for p in v] for k, v in params.items()}
        client = make_transport(args.client, args.timeout)
        try:
            for row, q in ((r, next(q for q in QUERIES if q.key == r.key)) for r in rows):
                warm = sek_params[q.key][:args.warmup]
                try:
                    counts = [fetch_rows(client, base, q, p) for p in warm]
                except Exception as e:  # an unsupported search is a result
                    row.na = f"sekmet: {str(e)[:300]}"
                    log(f"  sekmet {q.key}: n/a ({row.na})")
                    continue
                row.sekmet_rows = sum(counts) / len(counts) if counts else None
                row.sekmet = time_http(base, "sekmet", q, sek_params[q.key][args.warmup:],
                                       args)
                log(f"  sekmet {q.key}: p50 {fmt(row.sekmet.pct(50), 2)} ms, p95 "
                    f"{fmt(row.sekmet.pct(95), 2)} ms, {row.sekmet_rows or 0:.1f} rows")
        finally:
            client.close()

    ekd_srv = ekd_server_for(args, url, tmp, "ekd-subset")
    with running(ekd_srv, timeout_s=args.start_timeout), bearer(ekd_srv):
        wait_until_idle(ekd_srv)
        base = f"http://127.0.0.1:{ekd_srv.port}/fhir"
        client = make_transport(args.client, args.timeout)
        try:
            for row, q in ((r, next(q for q in QUERIES if q.key == r.key)) for r in rows):
                warm = params[q.key][:args.warmup]
                try:
                    counts = [fetch_rows(client, base, q, p) for p in warm]
                except Exception as e:  # reported, the run goes on
                    row.na = (row.na + "; " if row.na else "") + f"ekd: {str(e)[:300]}"
                    log(f"  ekd (subset) {q.key}: n/a ({e})")
                    continue
                row.ekd_rows = sum(counts) / len(counts) if counts else None
                row.ekd = time_http(base, "ekd-subset", q, params[q.key][args.warmup:], args)
                log(f"  ekd (subset) {q.key}: p50 {fmt(row.ekd.pct(50), 2)} ms, p95 "
                    f"{fmt(row.ekd.pct(95), 2)} ms, {row.ekd_rows or 0:.1f} rows")
        finally:
            client.close()
    return rows, info


# --------------------------------------------------------------------------- output


def ms(m: Measurement | None, q: float) -> str:
    return "n/a" if m is None or m.na else fmt(m.pct(q), 2)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(args: argparse.Namespace, datasets: list[Dataset], peer: list[PeerRow] | None,
           peer_info: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"ekd search benchmark  ({meta['when']}, git {meta['git']}"
        + (f", ekd from {meta['ekd_source']}" if meta.get("ekd_source") else "")
        + f", {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, client {args.client}, {args.requests} measured "
        f"requests per query after {args.warmup} warm-up, sequential)",
        "latency = one request as the client on the same machine sees it: ekd serve (1 worker) "
        "+ HTTP on 127.0.0.1 + client overhead; 'in-proc' = route.handle + JSON rendering in "
        "the benchmark process, no HTTP; 'custom-plan' = the same with the connection setting "
        "plan_cache_mode=force_custom_plan (no generic plans for prepared statements); floor = "
        "hand-written SQL on ekd's index tables via psycopg (prepared, custom plans), returning "
        "the same rows (content as text, and the total where ekd counts one)",
    ]
    for name, history in (meta.get("loads") or {}).items():
        for h in history:
            lines.append(f"loaded {name}: {h.get('resources_before', 0):,} -> "
                         f"{h.get('resources_after', 0):,} resources"
                         + (f" in {h['seconds']:.0f}s" if h.get("seconds") else "")
                         + (f" ({h['rate']:,.0f}/s)" if h.get("rate") else "")
                         + (f" as a copy of {h['template']} +" if h.get("template") else "")
                         + f" via {h.get('path')}")
    if meta.get("load_path"):
        lines.append(f"loading: {meta['load_path']}")
    for ds in datasets:
        lines += ["", f"== {ds.label}: {ds.database}, {ds.resources:,} resources"
                      f"{f' ({ds.size})' if ds.size else ''}; load average before "
                      f"{ds.load_before}, after {ds.load_after}"]
        header = ("query", "p50 ms", "p95 ms", "req/s", "target p95", "met?", "in-proc p50",
                  "in-proc p95", "custom-plan p50", "custom-plan p95", "floor p50",
                  "floor p95", "x floor p50", "x floor p95", "<=3x?", "rows", "rows agree")
        rows = []
        for r in ds.results:
            if r.na:
                rows.append((f"{r.key} {r.title}", "n/a", "n/a", "", "", "", "", "", "", "",
                             "", "", "", "", "", "", r.na[:60]))
                continue
            p95 = r.http.pct(95) if r.http else None
            target = r.target_p95_ms
            met = "" if target is None or p95 is None else ("yes" if p95 <= target else "NO")
            f50 = ratio(r.http.pct(50) if r.http else None, r.floor.pct(50) if r.floor else None)
            f95 = ratio(p95, r.floor.pct(95) if r.floor else None)
            rows.append((
                f"{r.key} {r.title}", ms(r.http, 50), ms(r.http, 95),
                fmt(r.http.rate if r.http else None), "-" if target is None else f"{target:g}",
                met, ms(r.inproc, 50), ms(r.inproc, 95), ms(r.inproc_custom, 50),
                ms(r.inproc_custom, 95), ms(r.floor, 50), ms(r.floor, 95),
                "n/a" if f50 is None else f"{f50:.1f}x", "n/a" if f95 is None else f"{f95:.1f}x",
                "" if f95 is None else ("yes" if f95 <= FLOOR_FACTOR else "NO"),
                fmt(r.ekd_rows, 1), r.agree))
        lines += table(header, rows)
        errs = [f"  {r.key}: {m.errors} errors, first: {m.first_error}"
                for r in ds.results for m in (r.http, r.inproc, r.inproc_custom, r.floor)
                if m and m.errors]
        if errs:
            lines += ["errors:", *errs]

    if len(datasets) >= 2:
        a, b = datasets[0], datasets[-1]
        lines += ["", f"== scaling {a.label} ({a.resources:,}) -> {b.label} ({b.resources:,}), "
                      f"x{b.resources / max(1, a.resources):.1f} resources"]
        header = ("query", f"p50 {a.label}", f"p50 {b.label}", "p50 change",
                  f"p95 {a.label}", f"p95 {b.label}", "p95 change", f"rows {a.label}",
                  f"rows {b.label}")
        rows = []
        bk = b.by_key()
        for ra in a.results:
            rb = bk.get(ra.key)
            if rb is None:
                continue

            def change(q: float, ra: QueryResult = ra, rb: QueryResult = rb) -> str:
                x = ra.http.pct(q) if ra.http and not ra.http.na else None
                y = rb.http.pct(q) if rb.http and not rb.http.na else None
                return "n/a" if x is None or y is None else f"{(y - x) / x * 100:+.0f}%"

            rows.append((f"{ra.key} {ra.title}", ms(ra.http, 50), ms(rb.http, 50), change(50),
                         ms(ra.http, 95), ms(rb.http, 95), change(95), fmt(ra.ekd_rows, 1),
                         fmt(rb.ekd_rows, 1)))
        lines += table(header, rows)

    if peer is not None:
        lines += ["", f"== ekd vs sekmet-fhir {SEKMET_VERSION} (own virtualenv, SQLite, "
                      f"inbound traffic log off) on the same {peer_info.get('children', '?')} "
                      f"children: ekd {peer_info.get('ekd_resources', 0):,} resources, sekmet "
                      f"{peer_info.get('sekmet_resources', 0):,} (loaded in "
                      f"{peer_info.get('sekmet_load_s', '?')}s, "
                      f"{peer_info.get('sekmet_rejected', '?')} bundles rejected)"]
        header = ("query", "ekd p50", "ekd p95", "sekmet p50", "sekmet p95",
                  "sekmet/ekd p50", "sekmet/ekd p95", "ekd rows", "sekmet rows")
        rows = []
        for r in peer:
            if r.na and (r.sekmet is None or r.ekd is None):
                rows.append((f"{r.key} {r.title}", ms(r.ekd, 50), ms(r.ekd, 95),
                             ms(r.sekmet, 50), ms(r.sekmet, 95), "n/a", "n/a",
                             fmt(r.ekd_rows, 1), r.na[:90]))
                continue
            s50 = ratio(r.sekmet.pct(50) if r.sekmet else None, r.ekd.pct(50) if r.ekd else None)
            s95 = ratio(r.sekmet.pct(95) if r.sekmet else None, r.ekd.pct(95) if r.ekd else None)
            rows.append((f"{r.key} {r.title}", ms(r.ekd, 50), ms(r.ekd, 95), ms(r.sekmet, 50),
                         ms(r.sekmet, 95), "n/a" if s50 is None else f"{s50:.2f}x",
                         "n/a" if s95 is None else f"{s95:.2f}x", fmt(r.ekd_rows, 1),
                         fmt(r.sekmet_rows, 1)))
        lines += table(header, rows)
        lines.append("sekmet/ekd > 1: sekmet is slower. Differing row counts mean the two "
                     "servers answer the question differently (e.g. date prefix semantics, "
                     "page size 20 vs 50).")

    explained = [(ds, r) for ds in datasets for r in ds.results if r.explain]
    if explained:
        lines += ["", "== EXPLAIN (ANALYZE, BUFFERS) of the SQL ekd sends, one request per "
                      "query (full plans in --json and with --plans)"]
        header = ("dataset", "query", "stmts", "exec ms (custom)", "exec ms (prepared, 6th)",
                  "generic plans", "seq scan on large table", "indexes used")
        rows = []
        for ds, r in explained:
            e = r.explain or {}
            if "error" in e:
                rows.append((ds.label, r.key, "", "", "", "", "", e["error"][:80]))
                continue
            rows.append((ds.label, r.key, str(len(e["statements"])),
                         f"{e['execution_ms_total']:.2f}",
                         f"{e['prepared_execution_ms_total']:.2f}",
                         f"{e['generic_plans']}/{len(e['statements'])}",
                         ", ".join(e["seq_scans_on_large_tables"]) or "none",
                         "; ".join(e["indexes"])))
        lines += table(header, rows)
        if args.plans:
            for ds, r in explained:
                for i, st in enumerate((r.explain or {}).get("statements", []), 1):
                    lines += ["", f"-- {ds.label} {r.key} statement {i} "
                                  f"({st['execution_ms']} ms): {st['sql'][:600]}", st["plan"]]
                    if st["prepared_generic_plan"]:
                        lines += [f"-- the same, prepared, 6th execution: generic plan "
                                  f"({st['prepared_execution_ms']} ms)", st["prepared_plan"]]
    ext = [(ds, r) for ds in datasets for r in ds.results if r.inproc_ext]
    if ext:
        lines += ["", "== experiment: CREATE STATISTICS (dependencies, mcv) on the index tables' "
                      "key columns (not part of ekd's schema; added for the experiment and "
                      "dropped again): in-process latency and SQL execution of one request"]
        header = ("dataset", "query", "in-proc p50", "in-proc p95", "+stats p50", "+stats p95",
                  "SQL ms custom", "+stats", "SQL ms prepared", "+stats")
        rows = []
        for ds, r in ext:
            e, x = r.explain or {}, r.explain_ext or {}
            rows.append((ds.label, r.key, ms(r.inproc, 50), ms(r.inproc, 95),
                         ms(r.inproc_ext, 50), ms(r.inproc_ext, 95),
                         fmt(e.get("execution_ms_total"), 2), fmt(x.get("execution_ms_total"), 2),
                         fmt(e.get("prepared_execution_ms_total"), 2),
                         fmt(x.get("prepared_execution_ms_total"), 2)))
        lines += table(header, rows)
        lines.append("statistics: " + "; ".join(f"CREATE STATISTICS {k} {v}"
                                                for k, v in EXTENDED_STATS.items()))
    lines += findings(datasets)
    return "\n".join(lines)


def _short_plan(plan: str, max_lines: int = 45) -> list[str]:
    out = [x if len(x) <= 240 else x[:237] + "..." for x in plan.splitlines()]
    return [f"    {x}" for x in out[:max_lines]] + (
        [f"    ... ({len(out) - max_lines} more lines)"] if len(out) > max_lines else [])


def findings(datasets: list[Dataset]) -> list[str]:
    """What needs attention, with the plan that shows why (largest dataset for the plans).

    Flags: a Seq Scan on a large table; a prepared statement whose 6th execution (generic
    plan) is much slower than the custom plan; a p95 over target, with where the time goes.
    """
    out: list[str] = []
    largest = datasets[-1] if datasets else None
    for ds in datasets:
        for r in ds.results:
            e = r.explain or {}
            sts = e.get("statements") or []
            show_plans = ds is largest
            for i, st in enumerate(sts, 1):
                seq = [x for x in st["scans"] if x["node"] == "Seq Scan" and x["large"]]
                if seq:
                    out.append(f"- {ds.label} {r.key}: statement {i} reads "
                               f"{', '.join(sorted({x['relation'] for x in seq}))} with a Seq Scan "
                               f"({st['execution_ms']} ms): {st['sql'][:300]}")
                    if show_plans:
                        out += _short_plan(st["plan"])
                slow = st["prepared_execution_ms"]
                if slow > max(3 * st["execution_ms"], st["execution_ms"] + 2.0):
                    kind = "a generic plan" if st["prepared_generic_plan"] else "its plan"
                    out.append(f"- {ds.label} {r.key}: statement {i}, once prepared, runs with "
                               f"{kind} in {slow} ms vs {st['execution_ms']} ms planned for its "
                               f"values: {st['sql'][:300]}")
                    if show_plans:
                        out += _short_plan(st["prepared_plan"])
            p95 = r.http.pct(95) if r.http and not r.http.na else None
            if r.target_p95_ms is not None and p95 is not None and p95 > r.target_p95_ms:
                parts = [f"HTTP p95 {p95:.1f} ms > {r.target_p95_ms:g} ms target"]
                if r.inproc and not r.inproc.na:
                    parts.append(f"in-process p95 {r.inproc.pct(95):.1f} ms")
                if r.inproc_custom and not r.inproc_custom.na:
                    parts.append(f"in-process with custom plans p95 "
                                 f"{r.inproc_custom.pct(95):.1f} ms")
                if sts:
                    parts.append(f"SQL execution of one request {e['execution_ms_total']:.1f} ms "
                                 f"(custom plans) / {e['prepared_execution_ms_total']:.1f} ms "
                                 "(prepared)")
                if r.floor and not r.floor.na:
                    parts.append(f"floor p95 {r.floor.pct(95):.1f} ms")
                out.append(f"- {ds.label} {r.key} misses its target: " + "; ".join(parts))
    return ["", "== findings (plans shown for the largest dataset)", *out] if out else []


# --------------------------------------------------------------------------- main


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip() or None
    except OSError:
        return None


def label_of(database: str) -> str:
    return database.removeprefix("ekd_bench_") or database


def write_json(path: Path, meta: dict, datasets: list[Dataset], peer: list[PeerRow] | None,
               peer_info: dict) -> None:
    doc = {
        "meta": meta,
        "datasets": [{"label": d.label, "database": d.database, "resources": d.resources,
                      "size": d.size, "load_average_before": d.load_before,
                      "load_average_after": d.load_after,
                      "results": [r.to_dict() for r in d.results]} for d in datasets],
        "sekmet": None if peer is None else {"info": peer_info,
                                             "rows": [r.to_dict() for r in peer]},
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    log(f"figures written to {path}")


def cmd_load(args: argparse.Namespace) -> int:
    info = load_demo(args.pg, args.db, args.resources, seed=args.seed_data,
                     server_workers=args.servers, client_workers=args.client_workers,
                     template=args.template)
    print(json.dumps(info, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    reason = postgres_available(f"postgresql://{args.pg}/postgres")
    if reason:
        log(reason)
        return 2
    missing = [d for d in args.db + ([args.sekmet_db] if args.sekmet_db else [])
               if not database_exists(args.pg, d)]
    if missing:
        log(f"not loaded yet: {', '.join(missing)} (run the load step first)")
        return 2
    meta = run_meta(args)
    meta["loads"] = {name: load_history(name)
                     for name in args.db + ([args.sekmet_db] if args.sekmet_db else [])}
    datasets: list[Dataset] = []
    peer = None
    peer_info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ekd-bench-search-") as tmp:
        for name in args.db:
            datasets.append(measure_dataset(args, label_of(name),
                                            sqlalchemy_url(args.pg, name), db_dsn(args.pg, name),
                                            name, Path(tmp)))
        if args.sekmet_db:
            peer, peer_info = sekmet_comparison(args, sqlalchemy_url(args.pg, args.sekmet_db),
                                                db_dsn(args.pg, args.sekmet_db), Path(tmp))
    meta["load_average_end"] = load_avg()
    return finish(args, meta, datasets, peer, peer_info)


def cmd_quick(args: argparse.Namespace) -> int:
    """A scratch database with a few thousand resources; everything once, small."""
    meta = run_meta(args)
    datasets: list[Dataset] = []
    peer = None
    peer_info: dict[str, Any] = {}
    reason = postgres_available(f"postgresql://{args.pg}/postgres")
    with tempfile.TemporaryDirectory(prefix="ekd-bench-search-") as tmp:
        if reason is None:
            with ScratchDatabase(f"postgresql://{args.pg}/postgres", "search") as db:
                info = load_demo(args.pg, db.name, args.quick_resources, seed=args.seed_data,
                                 server_workers=1, client_workers=2, workdir=Path(tmp))
                meta["load"] = info
                meta["load_path"] = info.get("path")
                url, dsn = sqlalchemy_url(args.pg, db.name), db_dsn(args.pg, db.name)
                datasets.append(measure_dataset(args, "quick-pg", url, dsn, db.name, Path(tmp)))
                if args.sekmet_db is not None or args.quick_sekmet:
                    peer, peer_info = sekmet_comparison(args, url, dsn, Path(tmp))
        else:
            log(f"{reason}: quick run on SQLite (no floor, no EXPLAIN)")
            path = Path(tmp) / "quick.db"
            info = load_demo(args.pg, "ekd_bench_quick_sqlite", args.quick_resources,
                             seed=args.seed_data, server_workers=1, client_workers=1,
                             workdir=Path(tmp), sqlite_path=path)
            meta["load"] = info
            meta["load_path"] = info.get("path")
            datasets.append(measure_dataset(args, "quick-sqlite", f"sqlite:///{path}", None,
                                            str(path), Path(tmp)))
    meta["load_average_end"] = load_avg()
    return finish(args, meta, datasets, peer, peer_info)


def run_meta(args: argparse.Namespace) -> dict[str, Any]:
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_rev(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "client": args.client,
            "requests": args.requests, "warmup": args.warmup, "seed": args.seed,
            "data_seed": args.seed_data, "load_average_start": load_avg(),
            "load_path": args.load_note,
            "ekd_source": str(args.ekd_source) if args.ekd_source else None}


def finish(args: argparse.Namespace, meta: dict, datasets: list[Dataset],
           peer: list[PeerRow] | None, peer_info: dict) -> int:
    if args.json:
        write_json(args.json, meta, datasets, peer, peer_info)
    sys.stderr.flush()
    print(render(args, datasets, peer, peer_info, meta), flush=True)
    ok = any(r.http and r.http.resources for d in datasets for r in d.results)
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("load", "run"), default=None)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: scratch database, ~3,000 resources, few requests")
    p.add_argument("--pg", default="postgres@127.0.0.1:5432", help="PostgreSQL user@host:port")
    p.add_argument("--db", action="append", default=None,
                   help="database (ekd_bench*): load: the one to top up; run: one per dataset, "
                        "repeatable, smallest first")
    g = p.add_argument_group("load")
    g.add_argument("--resources", type=int, default=100_000,
                   help="load: top up to at least this many resources")
    g.add_argument("--template", default=None,
                   help="load: create the database as a copy of this one when it is missing")
    g.add_argument("--servers", type=int, default=2,
                   help="load: ekd serve processes (one per core)")
    g.add_argument("--client-workers", type=int, default=3,
                   help="load: bundles posted concurrently")
    g.add_argument("--seed-data", type=int, default=1, help="ekd demo-data seed")
    g = p.add_argument_group("run")
    g.add_argument("--requests", type=int, default=None,
                   help="measured requests per query (default 200; 20 with --quick)")
    g.add_argument("--warmup", type=int, default=None,
                   help="unmeasured requests first (default 20; 5 with --quick)")
    g.add_argument("--queries", default="q1,q2,q3,q3s,q4,q5,q6", help="subset, comma separated")
    g.add_argument("--sekmet-db", default=None,
                   help="run: the ekd database whose children are also loaded into sekmet-fhir "
                        "for the side-by-side (e.g. ekd_bench_20k)")
    g.add_argument("--quick-sekmet", action="store_true",
                   help="--quick: also compare with sekmet-fhir on the quick data")
    g.add_argument("--quick-resources", type=int, default=3000)
    g.add_argument("--sekmet-venv", default=str(cache_dir() / "sekmet-venv"))
    g.add_argument("--client", choices=CLIENTS, default="stdlib",
                   help="HTTP client (stdlib: least client overhead; httpx as in bench_core)")
    g.add_argument("--no-in-process", action="store_true",
                   help="skip the in-process measurement")
    g.add_argument("--plans", action="store_true", help="print every EXPLAIN plan in full")
    g.add_argument("--extended-stats", action="store_true",
                   help="experiment: add extended statistics on the index tables for a while "
                        "and measure in-process again (removed afterwards, even on errors)")
    g.add_argument("--seed", type=int, default=20261122, help="parameter sampling seed")
    g.add_argument("--json", type=Path, default=None)
    g.add_argument("--timeout", type=float, default=60.0)
    g.add_argument("--max-seconds", type=float, default=600.0)
    g.add_argument("--start-timeout", type=float, default=120.0)
    g.add_argument("--ekd-source", type=Path, default=None,
                   help="measure ekd from this source tree (e.g. `git archive REV | tar -x -C "
                        "DIR`) instead of this checkout: server and in-process")
    g.add_argument("--load-note", default=None,
                   help="how the databases were loaded, for the report (the load step logs it)")
    args = p.parse_args(argv)
    if args.command is None and not args.quick:
        p.error("give a command (load, run) or --quick")
    if args.command == "load" and (not args.db or len(args.db) != 1):
        p.error("load needs exactly one --db")
    if args.command == "run" and not args.db:
        args.db = ["ekd_bench_100k", "ekd_bench_1m"]
    args.requests = args.requests or (20 if args.quick else 200)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.quick else 20)
    args.queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    if args.command == "load":
        args.db = args.db[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ekd_source:  # before anything imports ekd (all ekd imports here are lazy)
        assert "ekd" not in sys.modules
        sys.path.insert(0, str(args.ekd_source.resolve()))
    with sigterm_as_exit():
        if args.command == "load":
            return cmd_load(args)
        if args.command == "run":
            return cmd_run(args)
        return cmd_quick(args)


if __name__ == "__main__":
    sys.exit(main())
