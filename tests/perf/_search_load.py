"""Loading the demo dossiers (`ekd demo-data`) into a database for the search benchmark.

Why through the API: that is the documented path (`ekd demo-data --url` against `ekd serve`), so
every stored resource went through validation, the JGZ profiles and ekd's own indexer, exactly
as in production. The loader reuses ekd's own pieces - `ekd.jgz.demo.child_bundle` for the
dossiers and `ekd.cli.demo.post_bundles` for posting them - and adds only what a long load
needs: it is resumable and tops up.

Resumable: child number i of a seed always has the BSN `bsn_pool(seed)[3 * i]`, so the children
already in the database are known from the BSNs in ekd's own `search_token` table, and a new
run loads only the missing ones (each child is one transaction, so a child is there or not).
Loading stops as soon as the database holds at least the requested number of resources.

A larger database can start as a copy of a smaller one (`CREATE DATABASE ... TEMPLATE`), so the
1,000,000-resource database is the 100,000 one plus 900,000 more, and both stay available.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
from _servers import ServerProcess, cache_dir, ekd_server, log, running

BSN_SYSTEM = "http://fhir.nl/fhir/NamingSystem/bsn"
#: Resources a child adds on average (188 entries, minus the shared organisations and
#: professionals that are only matched); used to size chunks, never for the stop condition.
RESOURCES_PER_CHILD = 179
CHUNK_CHILDREN = 200


def admin_dsn(pg: str) -> str:
    """`user@host:port` -> a libpq URI of the maintenance database."""
    return f"postgresql://{pg}/postgres"


def db_dsn(pg: str, name: str) -> str:
    return f"postgresql://{pg}/{name}"


def sqlalchemy_url(pg: str, name: str) -> str:
    return f"postgresql+psycopg://{pg}/{name}"


def database_exists(pg: str, name: str) -> bool:
    with psycopg.connect(admin_dsn(pg), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is not None


def ensure_database(pg: str, name: str, template: str | None = None) -> None:
    """Create `name` (empty, or as a copy of `template`) unless it exists."""
    if not name.startswith("ekd_bench"):
        raise SystemExit(f"refusing to use database {name!r}: the benchmark only touches "
                         "databases named ekd_bench*")
    if database_exists(pg, name):
        return
    with psycopg.connect(admin_dsn(pg), autocommit=True) as conn:
        if template:
            if not database_exists(pg, template):
                raise SystemExit(f"template database {template} does not exist; load it first")
            log(f"creating {name} as a copy of {template}")
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            log(f"creating empty database {name}")
            conn.execute(f'CREATE DATABASE "{name}"')


def count_resources(dsn: str) -> int:
    """Current (not deleted) resources; 0 before ekd has created its schema."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('public.resource')").fetchone()
        if not exists or exists[0] is None:
            return 0
        return int(conn.execute("SELECT count(*) FROM resource WHERE NOT deleted").fetchone()[0])


def loaded_child_bsns(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('public.search_token')").fetchone()
        if not exists or exists[0] is None:
            return set()
        rows = conn.execute(
            "SELECT code FROM search_token WHERE type = 'Patient' AND param = 'identifier' "
            "AND system = %s", (BSN_SYSTEM,)).fetchall()
        return {r[0] for r in rows}


def _missing_children(bsns: list[str], loaded: set[str], max_children: int) -> Iterator[int]:
    for index in range(max_children):
        if bsns[3 * index] not in loaded:
            yield index


def load_demo(pg: str, name: str, resources: int, *, seed: int = 1,
              reference_date: dt.date | None = None, server_workers: int = 2,
              client_workers: int = 3, template: str | None = None,
              workdir: Path | None = None, sqlite_path: Path | None = None) -> dict:
    """Top up database `name` (or the SQLite file) to at least `resources` resources."""
    from ekd.jgz import demo

    ref = reference_date or demo.DEFAULT_REFERENCE_DATE
    if sqlite_path is not None:
        url = f"sqlite:///{sqlite_path}"
        dsn = None
    else:
        ensure_database(pg, name, template)
        url = sqlalchemy_url(pg, name)
        dsn = db_dsn(pg, name)

    def current() -> int:
        if dsn is not None:
            return count_resources(dsn)
        return _sqlite_count(sqlite_path)

    before = current()
    if before >= resources:
        log(f"{name}: already {before:,} resources (>= {resources:,}); nothing to load")
        return {"database": name, "resources_before": before, "resources_after": before,
                "loaded": 0, "seconds": 0.0, "rate": None}
    loaded = loaded_child_bsns(dsn) if dsn else _sqlite_child_bsns(sqlite_path)
    bsns = demo.bsn_pool(seed)
    todo = _missing_children(bsns, loaded, demo.MAX_CHILDREN)
    log(f"{name}: {before:,} resources, {len(loaded):,} children; loading to {resources:,} "
        f"through the API ({server_workers} x ekd serve, {client_workers} client "
        f"workers, seed {seed}, reference date {ref})")

    with contextlib.ExitStack() as cleanup:
        tmp = workdir or Path(cleanup.enter_context(
            tempfile.TemporaryDirectory(prefix="ekd-bench-load-")))
        return _load(name, url, dsn, sqlite_path, tmp, before, resources, todo, bsns, seed, ref,
                     server_workers, client_workers, template, current)


def _load(name: str, url: str, dsn: str | None, sqlite_path: Path | None, tmp: Path,
          before: int, resources: int, todo: Iterator[int], bsns: list[str], seed: int,
          ref: dt.date, server_workers: int, client_workers: int, template: str | None,
          current: Callable[[], int]) -> dict:
    from ekd.cli.demo import post_bundles
    from ekd.jgz import demo

    # Separate single-worker servers rather than one `--workers N`: uvicorn's workers share one
    # listening socket and the first to accept takes every keep-alive connection of the client,
    # which left one worker busy and the other idle (measured: 60% vs 2% CPU).
    servers = []
    for n in range(server_workers):
        server = ekd_server(url, tmp, f"load-{name}-{n}")
        # The documented path validates against the JGZ profiles: keep them on while loading.
        assert server.env is not None
        server.env["EKD_JGZ_ENFORCE"] = "true"
        server.argv += ["--log-level", "warning"]
        servers.append(server)
    started = time.perf_counter()
    count = before
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(running(server, timeout_s=180))
        bases = [f"http://127.0.0.1:{s.port}/fhir" for s in servers]
        # client w always posts to server w % len(servers): it sends that server's token
        # (ekd needs one since #6; a tree that prints none gets no header)
        headers = [auth_headers(s) for s in servers]
        clients = [stack.enter_context(httpx.Client(timeout=600,
                                                    headers=headers[w % len(servers)]))
                   for w in range(client_workers)]
        shared = post_bundles(clients[0], bases[0], [demo.shared_bundle()])
        if shared.rejected:
            raise RuntimeError(f"shared organisations rejected: {shared.first_error}")
        with ThreadPoolExecutor(max_workers=client_workers) as pool:
            while count < resources:
                n = min(CHUNK_CHILDREN, math.ceil((resources - count) / RESOURCES_PER_CHILD) + 1)
                chunk = [i for _, i in zip(range(n), todo, strict=False)]
                if not chunk:
                    log(f"{name}: out of test-range BSNs at {count:,} resources")
                    break
                t0 = time.perf_counter()
                futures = [
                    pool.submit(post_bundles, clients[w], bases[w % len(bases)],
                                [demo.child_bundle(i, seed, ref, bsns)
                                 for i in chunk[w::client_workers]])
                    for w in range(client_workers)]
                results = [f.result() for f in futures]
                rejected = sum(r.rejected for r in results)
                if rejected:
                    first = next(r.first_error for r in results if r.first_error)
                    raise RuntimeError(f"{rejected} child bundles rejected; first: {first}")
                new = current()
                dt_s = time.perf_counter() - t0
                total_s = time.perf_counter() - started
                log(f"{name}: {new:,} resources (+{new - count:,} in {dt_s:.0f}s = "
                    f"{(new - count) / dt_s:,.0f}/s; overall {(new - before) / total_s:,.0f}/s; "
                    f"load avg {os.getloadavg()[0]:.2f})")
                count = new
    seconds = time.perf_counter() - started
    if dsn is not None:
        log(f"{name}: VACUUM ANALYZE")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
    rate = (count - before) / seconds if seconds else None
    log(f"{name}: loaded {count - before:,} resources in {seconds:.0f}s "
        f"({rate or 0:,.0f}/s); now {count:,}")
    info = {"database": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resources_before": before, "resources_after": count, "loaded": count - before,
            "seconds": round(seconds, 1), "rate": round(rate, 1) if rate else None,
            "template": template, "seed": seed, "reference_date": ref.isoformat(),
            "path": f"HTTP API: ekd.jgz.demo transaction bundles (as `ekd demo-data --url`) to "
                    f"{server_workers} x `ekd serve`, JGZ profiles enforced, "
                    f"{client_workers} client threads"}
    if sqlite_path is None:
        record_load(name, info)
    return info


def auth_headers(server: ServerProcess) -> dict[str, str]:
    """The Authorization header with the development token `server` printed, if any."""
    try:
        return {"Authorization": f"Bearer {server.token()}"}
    except RuntimeError:
        return {}


def load_record_path(name: str) -> Path:
    return cache_dir() / f"search-load-{name}.json"


def record_load(name: str, info: dict) -> None:
    """Append to the database's load history, so that `run` can say how it was loaded."""
    path = load_record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = load_history(name)
    history.append(info)
    path.write_text(json.dumps(history, indent=2) + "\n")


def load_history(name: str) -> list[dict]:
    path = load_record_path(name)
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []


def _sqlite_count(path: Path | None) -> int:
    import sqlite3

    if path is None or not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'resource'").fetchone():
            return 0
        return int(conn.execute("SELECT count(*) FROM resource WHERE NOT deleted").fetchone()[0])


def _sqlite_child_bsns(path: Path | None) -> set[str]:
    import sqlite3

    if path is None or not path.exists():
        return set()
    with sqlite3.connect(path) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'search_token'").fetchone():
            return set()
        rows = conn.execute("SELECT code FROM search_token WHERE type = 'Patient' AND "
                            "param = 'identifier' AND system = ?", (BSN_SYSTEM,)).fetchall()
        return {r[0] for r in rows}


__all__ = ["ServerProcess", "count_resources", "database_exists", "db_dsn", "ensure_database",
           "load_demo", "sqlalchemy_url"]
