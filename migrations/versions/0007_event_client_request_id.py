"""events.client_request_id: the client's X-Request-ID, kept beside the server's own request id.

`events.request_id` is from now on always the server's id of the request that wrote the event (a
client could send any id, even someone else's); the client's id, when it sent a well-formed one,
goes here, marked as the client's. A nullable column without a default: instant on PostgreSQL
(no table rewrite). SQLite adds and drops it in place too (batch mode, `recreate="never"`:
SQLite 3.35+ drops a column natively), since a rebuilt table would lose the append-only
triggers 0001 put on `events`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", recreate="never") as batch:
        batch.add_column(sa.Column("client_request_id", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", recreate="never") as batch:
        batch.drop_column("client_request_id")
