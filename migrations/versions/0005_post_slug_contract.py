"""Contract: posts.slug NOT NULL, once every row has one (refuses, saying what to run, if not).

PostgreSQL, without a long exclusive lock: a `CHECK (slug IS NOT NULL) NOT VALID` constraint
first (instant; from then on no writer can add a NULL), then the count of rows still missing
(refusal, with the constraint removed again, if any), `VALIDATE CONSTRAINT` (a scan under a
lock that lets reads and writes go on), `SET NOT NULL` (no scan: PostgreSQL 12+ proves it from
the validated check) and the check dropped. Each step commits on its own (autocommit block),
under the session's lock_timeout (migrations/env.py), and each can be run again.

SQLite: the same refusal, then batch mode (the table is rebuilt with the NOT NULL column).

Uniqueness needs nothing here: the unique index uq_posts_slug exists since 0003.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Batch mode reflects the table it rebuilds; by default also every table a foreign key names,
# and SQLite cannot reflect the users table's expression indexes (a warning for each, to every
# operator). Only posts is rebuilt: users is left unreflected (alembic stands in a stub for the
# key's target), so nothing is skipped and nothing warns.
POSTS_ONLY = {"resolve_fks": False}

SLUG = sa.String(87)
CHECK = "ck_posts_slug_not_null"


def _refuse_if_missing() -> None:
    missing = op.get_bind().scalar(sa.text("SELECT count(*) FROM posts WHERE slug IS NULL"))
    if missing:
        raise RuntimeError(
            f"migration 0005 refused: {missing} posts still have no slug. Run "
            "`flask backfill run post_slugs` (check with `flask backfill status post_slugs`), "
            "make sure no release older than 0003's code is still writing posts, then "
            "`flask db upgrade` again."
        )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        _refuse_if_missing()
        with op.batch_alter_table("posts", reflect_kwargs=POSTS_ONLY) as batch:
            batch.alter_column("slug", existing_type=SLUG, nullable=False)
        restore_sqlite_post_indexes()
        return
    with op.get_context().autocommit_block():
        op.execute(f"ALTER TABLE posts DROP CONSTRAINT IF EXISTS {CHECK}")
        op.execute(f"ALTER TABLE posts ADD CONSTRAINT {CHECK} CHECK (slug IS NOT NULL) NOT VALID")
        try:
            _refuse_if_missing()
        except RuntimeError:
            op.execute(f"ALTER TABLE posts DROP CONSTRAINT IF EXISTS {CHECK}")
            raise
        op.execute(f"ALTER TABLE posts VALIDATE CONSTRAINT {CHECK}")
        op.alter_column("posts", "slug", existing_type=SLUG, nullable=False)
        op.execute(f"ALTER TABLE posts DROP CONSTRAINT {CHECK}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        with op.batch_alter_table("posts", reflect_kwargs=POSTS_ONLY) as batch:
            batch.alter_column("slug", existing_type=SLUG, nullable=True)
        restore_sqlite_post_indexes()
        return
    op.alter_column("posts", "slug", existing_type=SLUG, nullable=True)


def restore_sqlite_post_indexes() -> None:
    """Batch mode rebuilds the table from reflection, which loses the DESC of 0001's indexes:
    put them back exactly as 0001 made them (same helper as in 0003)."""
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
