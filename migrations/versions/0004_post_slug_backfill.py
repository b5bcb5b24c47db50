"""Backfill: a slug for every post that has none, in short batches (app/backfill).

Runs exactly what `flask backfill run post_slugs` runs (the same declaration, the same runner,
the same checkpoint row), outside the migration's transaction: each batch commits on its own
connection, so the table is never locked for the whole walk, and an interrupted upgrade resumes
where it stopped. When an operator has already run the backfill this finds nothing to do. The
batches use the session's lock_timeout (migrations/env.py) too.

Downgrade does nothing: the slugs are valid data for revision 0003 as well (and the column goes
away with 0003's downgrade).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op
from flask import current_app

from app.backfill import options_from_config, run_backfill
from app.posts.backfills import POST_SLUGS

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    options = options_from_config(current_app.config)
    if bind.dialect.name == "postgresql":
        options["lock_timeout"] = bind.exec_driver_sql("SHOW lock_timeout").scalar()
    with op.get_context().autocommit_block():
        run_backfill(POST_SLUGS, bind.engine, **{**options, "sleep_seconds": 0.0})


def downgrade() -> None:
    pass
