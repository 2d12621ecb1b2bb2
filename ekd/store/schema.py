"""Tables of the resource store (SQLAlchemy Core), shared by PostgreSQL and SQLite.

- `resource`: one row per logical resource, pointing at its current version. Small and hot:
  it is what reads, conditional operations and (later) search results join against.
- `resource_version`: every version ever written, content included (JSONB on PostgreSQL, JSON
  text on SQLite). `seq` orders all writes globally, which gives system-level history and
  stable history paging without relying on clock resolution.
- `search_token`: token index rows (system, code) per current resource and search parameter.
  Other index tables (string, date, quantity, reference, ...) follow the same shape: they hang
  off `resource.pk` and are rewritten in the same transaction as the resource.

`org` on `resource` and on index rows is the organisation that holds the dossier (NULL until
organisation scoping is switched on), so scoped reads and searches need no join.
The schema is created by Alembic migrations (`ekd/store/migrations`), never by `create_all`
in production code.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

#: BIGINT on PostgreSQL; INTEGER on SQLite so that it aliases the rowid (autoincrement).
PK = BigInteger().with_variant(Integer(), "sqlite")
CONTENT = JSON().with_variant(JSONB(), "postgresql")

resource = Table(
    "resource",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("org", String(64), nullable=True),
    UniqueConstraint("type", "id", name="uq_resource_type_id"),
    Index("ix_resource_type_last_updated", "type", "last_updated"),
)

resource_version = Table(
    "resource_version",
    metadata,
    Column("seq", PK, primary_key=True, autoincrement=True),
    Column("resource_pk", PK, ForeignKey("resource.pk"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    #: The interaction that produced the version: POST, PUT, PATCH or DELETE.
    Column("method", String(8), nullable=False),
    #: NULL for the version written by a delete.
    Column("content", CONTENT, nullable=True),
    Column("org", String(64), nullable=True),
    UniqueConstraint("resource_pk", "version", name="uq_resource_version"),
    Index("ix_resource_version_type_seq", "type", "seq"),
    Index("ix_resource_version_type_id", "type", "id", "version"),
    Index("ix_resource_version_last_updated", "last_updated"),
)

search_token = Table(
    "search_token",
    metadata,
    Column("resource_pk", PK, ForeignKey("resource.pk"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    Column("org", String(64), nullable=True),
    Index("ix_search_token_lookup", "type", "param", "code", "system"),
    Index("ix_search_token_resource", "resource_pk"),
)
