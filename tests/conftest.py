"""Test fixtures: every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from EKD_TEST_DATABASE_URL (a server where we may create databases); without
it, from testcontainers when a Docker engine is available; otherwise the PostgreSQL variants
skip with the reason shown. Each test session works in its own freshly created database that
is dropped at the end, and each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ekd.api.app import build_services, create_app
from ekd.config import Settings
from ekd.interaction.base import Services
from ekd.store.database import Database
from ekd.store.schema import INDEX_TABLES

SHARED = Path(__file__).resolve().parents[2] / "shared"
BACKENDS = ["sqlite", "postgresql"]


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    url = os.environ.get("EKD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if not _docker_available():
        pytest.skip("PostgreSQL tests need EKD_TEST_DATABASE_URL or a Docker engine for "
                    "testcontainers; neither is available")
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver="psycopg") as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="session")
def postgresql_url(postgres_server_url: str) -> Iterator[str]:
    """A database of our own on the server, dropped when the session ends."""
    server = make_url(postgres_server_url)
    name = f"ekd_test_{uuid.uuid4().hex[:12]}"
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


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'ekd.db'}"


_databases: dict[str, Database] = {}


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A migrated database with empty tables, on each backend."""
    url = request.getfixturevalue(f"{request.param}_url")
    db = _databases.get(url)
    if db is None:
        db = _databases[url] = Database(url)
        db.upgrade()
    _empty(db)
    yield db


def _empty(db: Database) -> None:
    tables = [*INDEX_TABLES, "reindex_job", "resource_version", "resource"]
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def settings(database: Database) -> Settings:
    """A generic FHIR server: the JGZ profile rules are off (tests of them switch them on)."""
    return Settings(database_url=str(database.url), base_url="http://testserver/fhir",
                    jgz_enforce=False)


@pytest.fixture
def services(database: Database, settings: Settings) -> Services:
    return build_services(settings, database)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=services), raise_server_exceptions=False) as c:
        yield c


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for db in _databases.values():
        db.dispose()
