"""The transactional outbox: `outbox` (one row per event still to be published, written in the
write's transaction) and `outbox_shards` (which relay holds each shard, until when).

Events written before this revision are history, not feed: nothing is enqueued for them (a new
consumer is not flooded with the whole log). Two new tables: no lock on a populated one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SHARDS = 16  # app/core/outbox.py SHARDS, as of this revision


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_shard", "outbox", ["shard", "id"])
    shards = op.create_table(
        "outbox_shards",
        sa.Column("shard", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("shard", name="pk_outbox_shards"),
    )
    op.bulk_insert(shards, [{"shard": n, "owner": None, "lease_until": 0.0} for n in range(SHARDS)])


def downgrade() -> None:
    op.drop_table("outbox_shards")
    op.drop_index("ix_outbox_shard", table_name="outbox")
    op.drop_table("outbox")
