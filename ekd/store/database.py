"""Engines and transactions for PostgreSQL (production) and SQLite (embedded default).

Write transactions on SQLite start with BEGIN IMMEDIATE so that two writers queue on the
database lock instead of failing when a read lock cannot be upgraded; WAL mode keeps readers
running alongside a writer. On PostgreSQL, READ COMMITTED plus compare-and-set updates on
`resource.version` give the optimistic-locking guarantees (see ekd.store.resources).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


_AFTER_COMMIT = "ekd.after_commit"


def after_commit(conn: Connection, hook: Callable[[], None]) -> None:
    """Run `hook` after the `Database.write` transaction of `conn` commits (never when it rolls
    back): for telling another thread about rows it can only see once they are committed."""
    conn.info.setdefault(_AFTER_COMMIT, []).append(hook)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Database:
    """An engine plus the two kinds of transaction the server uses."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
            "echo": echo,
        }
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            # No pre-ping: it costs a round trip per request; stale connections are recycled.
            kwargs.update(pool_size=10, max_overflow=20, pool_recycle=1800)
        self.engine: Engine = create_engine(self.url, **kwargs)
        #: Single-statement reads on PostgreSQL use connections that are in autocommit from the
        #: start: switching a pooled connection per checkout costs ~60 us of a 0.4 ms read.
        self._autocommit_engine: Engine | None = None
        #: SQLite has one writer at a time. Threads of this process queue for it here, and
        #: the one waiting longest gets it the moment it is free; left to SQLite, they would
        #: poll with sleeps of up to 100 ms and a busy writer could starve the others.
        self._writer = threading.RLock() if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        else:
            self._autocommit_engine = create_engine(
                self.url, isolation_level="AUTOCOMMIT", **kwargs
            )

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; what `after_commit` registered on it runs once it committed."""
        with self._writer or contextlib.nullcontext(), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            committed = False
            try:
                with conn.begin():
                    yield conn
                committed = True
            finally:
                # `info` belongs to the pooled DBAPI connection: never leave hooks behind.
                hooks = conn.info.pop(_AFTER_COMMIT, [])
            if committed:
                for hook in hooks:
                    hook()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one snapshot for several statements (search, history)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """For a single read statement: no BEGIN/COMMIT round trips (PostgreSQL; SQLite runs
        in-process, where a transaction costs nothing worth saving)."""
        if self._autocommit_engine is None:
            with self.read() as conn:
                yield conn
            return
        with self._autocommit_engine.connect() as conn:
            yield conn

    # -- schema -----------------------------------------------------------------------------

    def _alembic_config(self, conn: Connection) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        with self.engine.connect() as conn:
            command.upgrade(self._alembic_config(conn), revision)
            conn.commit()

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        script = ScriptDirectory(str(MIGRATIONS))
        return script.get_current_head()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # A received dossier writes ~1,000 WAL pages, SQLite's default checkpoint interval, so
        # nearly every import paid for a checkpoint (~14 ms, write lock held). Every 10,000
        # pages (~40 MB) instead; the WAL file is cut back to 64 MB after a checkpoint.
        cur.execute("PRAGMA wal_autocheckpoint=10000")
        cur.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())
