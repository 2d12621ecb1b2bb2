"""Dossier transfer: the sender's state machine and outbox, the receiver's inbox, the origin of
imported resources, and bulk runs (issue #7, `ekd.transfer`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CONTENT = sa.JSON().with_variant(JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "transfer",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("created", TIME, nullable=False),
        sa.Column("updated", TIME, nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("package", sa.Text, nullable=True),
        sa.Column("package_hash", sa.String(64), nullable=True),
        sa.Column("resources", sa.Integer, nullable=True),
        sa.Column("technical_receipt", sa.Text, nullable=True),
        sa.Column("application_receipt", sa.Text, nullable=True),
        sa.Column("problems", CONTENT, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_until", TIME, nullable=True),
    )
    op.create_index("ix_transfer_org_state", "transfer", ["org", "state"])
    op.create_index("ix_transfer_job", "transfer", ["job_id", "state"])
    op.create_index("ix_transfer_patient", "transfer", ["org", "patient_id"])
    op.create_table(
        "transfer_outbox",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("transfer_id", sa.String(36), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", TIME, nullable=False),
        sa.Column("claimed_until", TIME, nullable=True),
        sa.Column("last_error", sa.String(2000), nullable=True),
        sa.Column("created", TIME, nullable=False),
        sa.UniqueConstraint("message_id", name="uq_transfer_outbox_message"),
    )
    op.create_index("ix_transfer_outbox_due", "transfer_outbox", ["state", "next_attempt"])
    op.create_table(
        "transfer_inbox",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("transfer_id", sa.String(36), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("received", TIME, nullable=False),
        sa.Column("processed", TIME, nullable=True),
        sa.Column("technical_receipt", sa.Text, nullable=False),
        sa.Column("application_receipt", sa.Text, nullable=True),
        sa.Column("problems", CONTENT, nullable=True),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("claimed_until", TIME, nullable=True),
        sa.UniqueConstraint("org", "sender", "transfer_id", name="uq_transfer_inbox_transfer"),
    )
    op.create_index("ix_transfer_inbox_state", "transfer_inbox", ["org", "state"])
    op.create_table(
        "transfer_origin",
        sa.Column("org", sa.String(64), primary_key=True),
        sa.Column("sender", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(140), primary_key=True),
        sa.Column("local", sa.String(140), nullable=False),
    )
    op.create_table(
        "transfer_job",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("criteria", CONTENT, nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    for table in ("transfer_job", "transfer_origin", "transfer_inbox", "transfer_outbox",
                  "transfer"):
        op.drop_table(table)
