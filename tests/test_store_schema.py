"""The Alembic migrations build exactly the schema the code declares, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ekd.store.database import Database
from ekd.store.schema import metadata


def test_migrations_match_declared_schema(database: Database) -> None:
    assert database.current_revision() == database.head_revision()
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_resource_type_list_matches_the_models() -> None:
    from ekd.fhir.resource_types import RESOURCE_TYPES, model_resource_types

    assert model_resource_types() == RESOURCE_TYPES
