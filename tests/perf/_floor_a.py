"""Floor A: the workload's documents written straight into PostgreSQL, no HTTP, no FHIR logic.

Why: it is the rate PostgreSQL itself sustains for these rows on this machine, batched the way
a transaction bundle is (one chart per database transaction, executemany), with the same
number of concurrent writers as the HTTP tests. ekd's transaction ingest divided by this figure
is the share of the storage ceiling it reaches; the rest is HTTP, parsing, validation,
reference rewriting and indexing.

The rows go into ekd's own tables when ``ekd.store.schema`` provides them (``resource`` and
``resource_version``), created with ``metadata.create_all`` in a scratch database; otherwise
into a stand-in table of the same spirit. ``pick_schema`` is the one place to change that.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from _load import Measurement, process_cpu_s
from _servers import REPO_ROOT
from _workload import Chart
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

Row = dict[str, Any]
#: Writes one batch (a chart's documents) inside an open transaction.
Writer = Callable[[Connection, list[Row]], None]


@dataclass
class FloorSchema:
    metadata: MetaData
    writer: Writer
    description: str


def _standin_schema() -> FloorSchema:
    """Stand-in for ekd's resource table, used until ``ekd.store.schema`` exists."""
    md = MetaData()
    table = Table(
        "resource", md,
        Column("id", Text, primary_key=True),
        Column("type", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("last_updated", DateTime(timezone=True), nullable=False),
        Column("content", JSONB, nullable=False),
    )

    def write(conn: Connection, docs: list[Row]) -> None:
        conn.execute(table.insert(), [
            {"id": d["id"], "type": d["resourceType"], "version": 1,
             "last_updated": d["_ts"], "content": _content(d)} for d in docs])

    return FloorSchema(md, write, "stand-in table resource(id, type, version, last_updated, "
                                  "content jsonb)")


def _ekd_schema() -> FloorSchema:
    """ekd's ``resource`` + ``resource_version`` tables (pk from RETURNING, then versions)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from ekd.store import schema

    resource: Table = schema.resource
    version: Table = schema.resource_version
    rcols, vcols = set(resource.c.keys()), set(version.c.keys())
    needed_r = {"pk", "type", "id", "version", "last_updated"}
    needed_v = {"resource_pk", "type", "id", "version", "last_updated", "method", "content"}
    if not needed_r <= rcols or not needed_v <= vcols:
        raise RuntimeError(f"ekd.store.schema changed shape (resource: {sorted(rcols)}, "
                           f"resource_version: {sorted(vcols)}); update _floor_a._ekd_schema")
    insert_r = resource.insert().returning(resource.c.pk, sort_by_parameter_order=True)
    flags = {"deleted": False} if "deleted" in rcols else {}

    def write(conn: Connection, docs: list[Row]) -> None:
        pks = conn.execute(insert_r, [
            {"type": d["resourceType"], "id": d["id"], "version": 1, "last_updated": d["_ts"],
             **flags} for d in docs]).scalars().all()
        conn.execute(version.insert(), [
            {"resource_pk": pk, "type": d["resourceType"], "id": d["id"], "version": 1,
             "last_updated": d["_ts"], "method": "POST", "content": _content(d)}
            for pk, d in zip(pks, docs, strict=True)])

    return FloorSchema(schema.metadata, write,
                       "ekd.store.schema resource + resource_version (index tables left empty)")


def pick_schema() -> FloorSchema:
    """ekd's tables when importable and shaped as expected, else the stand-in."""
    try:
        return _ekd_schema()
    except (ImportError, AttributeError, RuntimeError) as e:
        fallback = _standin_schema()
        fallback.description += f" [ekd schema not used: {e}]"
        return fallback


def _content(doc: Row) -> Row:
    return {k: v for k, v in doc.items() if k != "_ts"}


def prepare(charts: list[Chart]) -> list[list[Row]]:
    """Documents as a server would store them: ids assigned, references resolved, meta set."""
    batches: list[list[Row]] = []
    for chart in charts:
        ids = {it.key: str(uuid.uuid4()) for it in chart.items}
        types = {it.key: it.resource_type for it in chart.items}
        now = datetime.now(UTC)
        refs = {key: f"{types[key]}/{ids[key]}" for key in ids}
        docs = []
        for it in chart.items:
            doc = it.render(refs.__getitem__)
            doc["id"] = ids[it.key]
            doc["meta"] = {"versionId": "1", "lastUpdated": now.isoformat()}
            doc["_ts"] = now
            docs.append(doc)
        batches.append(docs)
    return batches


def run_floor_a(url: str, charts: list[Chart], concurrency: int) -> Measurement:
    """Insert every chart as one executemany batch in its own transaction; time it all."""
    fs = pick_schema()
    engine = create_engine(
        url, pool_size=concurrency, max_overflow=0,
        json_serializer=lambda o: orjson.dumps(o).decode(),
    )
    try:
        fs.metadata.create_all(engine)
        batches = prepare(charts)
        # warm the pool and the plans, then start from empty tables
        with engine.begin() as conn:
            fs.writer(conn, prepare(charts[:1])[0][:3])
            for table in reversed(fs.metadata.sorted_tables):
                conn.execute(table.delete())
        lock = threading.Lock()
        pending = list(reversed(batches))
        lat: list[float] = []
        errors: list[str] = []
        rows_done = [0]

        def worker() -> None:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    batch = pending.pop()
                t0 = time.perf_counter()
                try:
                    with engine.begin() as conn:
                        fs.writer(conn, batch)
                except Exception as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                    return
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(dt)
                    rows_done[0] += len(batch)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
        cpu0 = process_cpu_s()
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu = process_cpu_s() - cpu0
    finally:
        engine.dispose()
    m = Measurement("floor-a", "insert", resources=rows_done[0], requests=len(lat) + len(errors),
                    errors=len(errors), wall_s=wall, latencies_ms=lat, unit="batch",
                    first_error=errors[0] if errors else None, note=fs.description,
                    client_cpu_s=cpu)
    if rows_done[0] == 0:
        m.na = errors[0] if errors else "nothing inserted"
    return m
