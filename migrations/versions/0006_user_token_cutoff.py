"""Users: the token cut-off of the last password change (when it happened, in milliseconds
since the epoch, and the login family that made it, which stays valid).

Both columns are nullable and have no default: adding them is instant on PostgreSQL and a
batch rebuild on SQLite; NULL means no password change has ended any login yet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("tokens_cutoff_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("tokens_kept_family", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("tokens_kept_family")
        batch.drop_column("tokens_cutoff_ms")
