"""Test fixtures: every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL comes from EKD_TEST_DATABASE_URL (a server where we may create databases); without
it, from testcontainers when a Docker engine is available; otherwise the PostgreSQL variants
skip with the reason shown. Each test session works in its own freshly created database that
is dropped at the end, and each test starts from empty tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ekd.api.app import build_services
from ekd.config import Settings
from ekd.interaction.base import Services
from ekd.store.database import Database
from tests.app_helpers import fhir_client
from tests.db_helpers import empty_database, scratch_database

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
    with scratch_database(postgres_server_url, "ekd_test") as url:
        yield url


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
    empty_database(db)
    yield db


@pytest.fixture
def settings(database: Database, tmp_path: Path) -> Settings:
    """A generic FHIR server: the JGZ profile rules are off (tests of them switch them on).
    Token signing keys are generated into the test's own folder."""
    return Settings(database_url=str(database.url), base_url="http://testserver/fhir",
                    jgz_enforce=False, key_dir=str(tmp_path / "keys"))


@pytest.fixture
def services(database: Database, settings: Settings) -> Services:
    return build_services(settings, database)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    """A client of the test organisation, as a machine client allowed everything."""
    with fhir_client(services) as c:
        yield c


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for db in _databases.values():
        db.dispose()
