"""Scratch PostgreSQL databases and emptying a test database, shared by fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ekd.store.database import Database
from ekd.store.schema import INDEX_TABLES


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A database of our own on the server (its URL), dropped afterwards."""
    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
            ), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def empty_database(db: Database, *, clients: bool = True) -> None:
    """Delete every resource, version, index and audit row, and (unless `clients` is False,
    for a test that empties the database between requests of one client) registered clients
    (the schema stays)."""
    tables = [*INDEX_TABLES, "reindex_job", "resource_version", "resource", "audit_patient",
              "audit_event", "audit_head", "transfer", "transfer_outbox", "transfer_inbox",
              "transfer_origin", "transfer_job"]
    if clients:
        tables += ["auth_jti", "auth_client"]
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
