"""The validation stamp a resource version was validated under (`ekd.validation.stamp`), so
that dossier transfer need not validate again what nothing since has changed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a version written before this revision was validated under an
    # unknown stamp and is simply validated again when it is sent.
    op.add_column("resource_version", sa.Column("validated", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resource_version") as batch:
        batch.drop_column("validated")
