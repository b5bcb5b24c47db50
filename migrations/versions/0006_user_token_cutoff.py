"""Users: the token cut-off of the last password change (when it happened, in milliseconds
since the epoch, and the login family that made it, which stays valid).

Both columns are nullable and have no default: adding (and dropping) them is a plain ALTER
TABLE, instant on PostgreSQL and on SQLite (3.35+ drops columns natively); no batch rebuild,
which would lose the users table's expression indexes. NULL: no password change ended a login.

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
    op.add_column("users", sa.Column("tokens_cutoff_ms", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("tokens_kept_family", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "tokens_kept_family")
    op.drop_column("users", "tokens_cutoff_ms")
