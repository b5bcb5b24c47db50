"""Users, posts, the append-only event log and revoked tokens.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TS = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")


def _entity_columns() -> list[sa.Column]:
    return [
        sa.Column("id", BIGINT, primary_key=True),
        sa.Column("public_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("updated_at", UTC_TS, nullable=False),
        sa.Column("deleted_at", UTC_TS, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "users",
        *_entity_columns(),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("bio", sa.Text(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("public_id", name="uq_users_public_id"),
    )
    for name, column in (("uq_users_email_live", "email"), ("uq_users_username_live", "username")):
        op.create_index(
            name,
            "users",
            [sa.text(f"lower({column})")],
            unique=True,
            sqlite_where=LIVE,
            postgresql_where=LIVE,
        )
    op.create_index(
        "ix_users_live_created",
        "users",
        [sa.text("created_at DESC"), sa.text("id DESC")],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )

    op.create_table(
        "posts",
        *_entity_columns(),
        sa.Column("author_id", BIGINT, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("published_at", UTC_TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_posts"),
        sa.UniqueConstraint("public_id", name="uq_posts_public_id"),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name="fk_posts_author_id_users", ondelete="RESTRICT"
        ),
        sa.CheckConstraint("status IN ('draft', 'published')", name="ck_posts_status_valid"),
    )
    published = sa.text("deleted_at IS NULL AND status = 'published'")
    op.create_index(
        "ix_posts_published_created",
        "posts",
        [sa.text("created_at DESC"), sa.text("id DESC")],
        sqlite_where=published,
        postgresql_where=published,
    )
    op.create_index(
        "ix_posts_author_created",
        "posts",
        ["author_id", sa.text("created_at DESC"), sa.text("id DESC")],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )

    op.create_table(
        "events",
        sa.Column("id", BIGINT, primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("aggregate_type", sa.String(32), nullable=False),
        sa.Column("aggregate_id", sa.Uuid(), nullable=False),
        sa.Column("aggregate_version", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", UTC_TS, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_aggregate", "events", ["aggregate_type", "aggregate_id", "id"])
    _create_append_only_guard()

    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("revoked_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_revoked_tokens"),
    )
    op.create_index("ix_revoked_tokens_expires_at", "revoked_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revoked_tokens_expires_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
    _drop_append_only_guard()
    op.drop_index("ix_events_aggregate", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_posts_author_created", table_name="posts")
    op.drop_index("ix_posts_published_created", table_name="posts")
    op.drop_table("posts")
    op.drop_index("ix_users_live_created", table_name="users")
    op.drop_index("uq_users_username_live", table_name="users")
    op.drop_index("uq_users_email_live", table_name="users")
    op.drop_table("users")


def _create_append_only_guard() -> None:
    """Events are immutable: the database itself refuses UPDATE and DELETE on them."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'events are append-only'; END; $$"
        )
        op.execute(
            "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
            "FOR EACH ROW EXECUTE FUNCTION events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events "
                "BEGIN SELECT RAISE(ABORT, 'events are append-only'); END"
            )


def _drop_append_only_guard() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
        op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
