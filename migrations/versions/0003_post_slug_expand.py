"""Expand: posts.slug (nullable) with its unique index, and the backfill checkpoint table.

Safe on a live, populated table: adding a nullable column without a default is a catalogue
change; the unique index is built with CREATE INDEX CONCURRENTLY on PostgreSQL (outside a
transaction: Alembic's autocommit block), so writes go on meanwhile. migrations/env.py sets
`lock_timeout` for the session, which the autocommit block keeps (same connection): a step that
would queue behind a long lock fails fast instead of stalling the traffic queued behind it.

Re-runnable: if the concurrent build fails (lock timeout, a duplicate), PostgreSQL leaves an
INVALID index and this revision is not stamped; running `flask db upgrade` again drops the
invalid index and builds it again (the column and table are only added when absent).

From this revision on the application writes slugs for new posts; old rows are filled by 0004
or `flask backfill run post_slugs`; 0005 then makes the column NOT NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Batch mode reflects the table it rebuilds; by default also every table a foreign key names,
# and SQLite cannot reflect the users table's expression indexes (a warning for each, to every
# operator). Only posts is rebuilt: users is left unreflected (alembic stands in a stub for the
# key's target), so nothing is skipped and nothing warns.
POSTS_ONLY = {"resolve_fks": False}

UTC_TS = sa.DateTime(timezone=True)
SLUG_MAX = 87  # app/posts/slugs.py: 60 for the words, "-", 26 for the id (frozen here)
INDEX = "uq_posts_slug"


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if "backfill_runs" not in inspector.get_table_names():
        op.create_table(
            "backfill_runs",
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("owner", sa.String(255), nullable=True),
            sa.Column("generation", sa.Integer(), nullable=False),
            sa.Column("last_key", sa.BigInteger(), nullable=True),
            sa.Column("rows_done", sa.BigInteger(), nullable=False),
            sa.Column("batches", sa.BigInteger(), nullable=False),
            sa.Column("started_at", UTC_TS, nullable=False),
            sa.Column("heartbeat_at", UTC_TS, nullable=False),
            sa.Column("finished_at", UTC_TS, nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("name", name="pk_backfill_runs"),
            sa.CheckConstraint(
                "state IN ('running', 'stopped', 'failed', 'done')",
                name="ck_backfill_runs_state_valid",
            ),
        )
    if "slug" not in {c["name"] for c in inspector.get_columns("posts")}:
        op.add_column("posts", sa.Column("slug", sa.String(SLUG_MAX), nullable=True))

    if bind.dialect.name != "postgresql":
        if INDEX not in {i["name"] for i in inspector.get_indexes("posts")}:
            op.create_index(INDEX, "posts", ["slug"], unique=True)
        return
    with op.get_context().autocommit_block():
        valid = op.get_bind().scalar(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": INDEX},
        )
        if valid is False:  # left by a failed concurrent build
            op.drop_index(INDEX, table_name="posts", postgresql_concurrently=True)
        if valid is not True:
            op.create_index(INDEX, "posts", ["slug"], unique=True, postgresql_concurrently=True)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index(INDEX, table_name="posts", postgresql_concurrently=True, if_exists=True)
        op.drop_column("posts", "slug")
    else:
        op.drop_index(INDEX, table_name="posts")
        with op.batch_alter_table("posts", reflect_kwargs=POSTS_ONLY) as batch:
            batch.drop_column("slug")
        restore_sqlite_post_indexes()
    op.drop_table("backfill_runs")


def restore_sqlite_post_indexes() -> None:
    """Batch mode rebuilds the table from reflection, which loses the DESC of 0001's indexes:
    put them back exactly as 0001 made them."""
    for name, columns, where in (
        (
            "ix_posts_published_created",
            [sa.text("created_at DESC"), sa.text("id DESC")],
            "deleted_at IS NULL AND status = 'published'",
        ),
        (
            "ix_posts_author_created",
            ["author_id", sa.text("created_at DESC"), sa.text("id DESC")],
            "deleted_at IS NULL",
        ),
    ):
        op.drop_index(name, table_name="posts", if_exists=True)
        op.create_index(name, "posts", columns, sqlite_where=sa.text(where))
