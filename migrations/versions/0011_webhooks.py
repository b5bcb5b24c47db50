"""Webhooks: subscriptions (`webhooks`), deliveries (`webhook_deliveries`, one per webhook and
event) and their attempts (`webhook_attempts`). Three new tables: no lock on a populated one.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TS = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", BIGINT, primary_key=True),
        sa.Column("public_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.Column("deleted_at", UTC_TS, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("owner_id", BIGINT, nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
        sa.UniqueConstraint("public_id", name="uq_webhooks_public_id"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_webhooks_owner_id_users", ondelete="RESTRICT"
        ),
    )
    op.create_index(
        "ix_webhooks_owner_created",
        "webhooks",
        ["owner_id", sa.text("created_at DESC"), sa.text("id DESC")],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("public_id", sa.Uuid(), nullable=False),
        sa.Column("webhook_id", BIGINT, nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_TS, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("delivered_at", UTC_TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("public_id", name="uq_webhook_deliveries_public_id"),
        sa.UniqueConstraint(
            "webhook_id", "event_id", name="uq_webhook_deliveries_webhook_id_event_id"
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.id"],
            name="fk_webhook_deliveries_webhook_id_webhooks",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')",
            name="ck_webhook_deliveries_status_valid",
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_status", "webhook_deliveries", ["webhook_id", "status", "id"]
    )
    op.create_index(
        "ix_webhook_deliveries_status_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_created",
        "webhook_deliveries",
        ["webhook_id", sa.text("created_at DESC"), sa.text("id DESC")],
    )

    op.create_table(
        "webhook_attempts",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", BIGINT, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", UTC_TS, nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_retry_at", UTC_TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name="fk_webhook_attempts_delivery_id_webhook_deliveries",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_webhook_created", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_status_due", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_webhook_status", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhooks_owner_created", table_name="webhooks")
    op.drop_table("webhooks")
