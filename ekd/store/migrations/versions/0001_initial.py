"""Resource store: current resources, version history, token index.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CONTENT = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.UniqueConstraint("type", "id", name="uq_resource_type_id"),
    )
    op.create_index("ix_resource_type_last_updated", "resource", ["type", "last_updated"])
    op.create_table(
        "resource_version",
        sa.Column("seq", PK, primary_key=True, autoincrement=True),
        sa.Column("resource_pk", PK, sa.ForeignKey("resource.pk"), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("content", CONTENT, nullable=True),
        sa.Column("org", sa.String(64), nullable=True),
        sa.UniqueConstraint("resource_pk", "version", name="uq_resource_version"),
    )
    op.create_index("ix_resource_version_type_seq", "resource_version", ["type", "seq"])
    op.create_index(
        "ix_resource_version_type_id", "resource_version", ["type", "id", "version"]
    )
    op.create_index("ix_resource_version_last_updated", "resource_version", ["last_updated"])
    op.create_table(
        "search_token",
        sa.Column("resource_pk", PK, sa.ForeignKey("resource.pk"), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=True),
        sa.Column("code", sa.String(255), nullable=True),
        sa.Column("org", sa.String(64), nullable=True),
    )
    op.create_index("ix_search_token_lookup", "search_token", ["type", "param", "code", "system"])
    op.create_index("ix_search_token_resource", "search_token", ["resource_pk"])


def downgrade() -> None:
    op.drop_table("search_token")
    op.drop_table("resource_version")
    op.drop_table("resource")
