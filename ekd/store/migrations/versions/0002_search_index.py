"""Search index tables, one per search parameter type, and `ekd reindex` progress.

Replaces the identifier-only `search_token` of 0001. Resources stored before this revision
have no index rows until `ekd reindex` runs (the server says so at start-up).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ORDERED_TEXT = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql")
TIME = sa.DateTime(timezone=True)

TABLES: dict[str, tuple[list[sa.Column], list[tuple[str, ...]]]] = {
    "search_token": (
        [sa.Column("system", sa.String(255)), sa.Column("code", sa.String(255)),
         sa.Column("text", ORDERED_TEXT)],
        [("type", "param", "code", "system")],
    ),
    "search_string": (
        [sa.Column("norm", ORDERED_TEXT, nullable=False),
         sa.Column("exact", sa.String(255), nullable=False)],
        [("type", "param", "norm")],
    ),
    "search_date": (
        [sa.Column("low", TIME, nullable=False), sa.Column("high", TIME, nullable=False)],
        [("type", "param", "low"), ("type", "param", "high")],
    ),
    "search_number": (
        [sa.Column("value", sa.Float, nullable=False)],
        [("type", "param", "value")],
    ),
    "search_quantity": (
        [sa.Column("system", sa.String(255)), sa.Column("code", sa.String(64)),
         sa.Column("value", sa.Float, nullable=False), sa.Column("canon_code", sa.String(64)),
         sa.Column("canon_value", sa.Float)],
        [("type", "param", "canon_code", "canon_value"), ("type", "param", "value")],
    ),
    "search_reference": (
        [sa.Column("target_type", sa.String(64)), sa.Column("target_id", sa.String(64)),
         sa.Column("url", sa.String(255))],
        [("target_id", "target_type", "type", "param"), ("type", "param", "url")],
    ),
    "search_uri": (
        [sa.Column("uri", ORDERED_TEXT, nullable=False)],
        [("type", "param", "uri")],
    ),
    "search_composite": (
        [sa.Column("system", sa.String(255)), sa.Column("code", sa.String(255)),
         sa.Column("c2_system", sa.String(255)), sa.Column("c2_code", sa.String(255)),
         sa.Column("c2_value", sa.Float), sa.Column("c2_low", TIME), sa.Column("c2_high", TIME),
         sa.Column("c2_text", ORDERED_TEXT)],
        [("type", "param", "code")],
    ),
}


def upgrade() -> None:
    op.drop_table("search_token")
    for name, (columns, indexes) in TABLES.items():
        op.create_table(
            name,
            sa.Column("resource_pk", PK, sa.ForeignKey("resource.pk"), nullable=False),
            sa.Column("type", sa.String(64), nullable=False),
            sa.Column("param", sa.String(64), nullable=False),
            *columns,
            sa.Column("org", sa.String(64), nullable=True),
        )
        op.create_index(f"ix_{name}_resource", name, ["resource_pk"])
        for cols in indexes:
            op.create_index(f"ix_{name}_{'_'.join(cols)}", name, list(cols))
    op.create_table(
        "reindex_job",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("last_pk", PK, nullable=False),
        sa.Column("total", PK, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("started", TIME, nullable=False),
        sa.Column("finished", TIME, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("reindex_job")
    for name in reversed(TABLES):
        op.drop_table(name)
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
