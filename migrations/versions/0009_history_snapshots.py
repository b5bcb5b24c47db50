"""History: snapshots that bound replay, the audit trail's index, and the prune gate.

- `snapshots`: an aggregate's folded state at one version (app/core/history.py). Derived data.
- `events`: the per-aggregate index becomes (aggregate_type, aggregate_id, occurred_at, id), the
  audit trail's keyset order and the replay ranges of `as_of`.
- `events_prune_gate`: the append-only guard now lets a DELETE of an event through only while
  a gate row is visible that covers it (`occurred_at < older_than`; on PostgreSQL also inserted by
  the deleting transaction itself, `txid = txid_current()`). `flask events prune` opens it in
  its own transaction and closes it before committing; ad-hoc DELETEs and every UPDATE are
  still refused. A later migration that rebuilds `events` on SQLite (batch mode drops
  triggers) must re-create the guard as defined here.
- A baseline: every existing user and post gets a `horizon` snapshot of its current row. Events
  written before this revision do not carry every field (timestamps, slugs), so history is
  answered from this baseline on; an instant before it is "no longer kept" (422).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TS = sa.DateTime(timezone=True)
BATCH = 5000

PG_GUARD = """
CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM events_prune_gate g
        WHERE g.txid = txid_current() AND OLD.occurred_at < g.older_than
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only';
END; $$
"""
PG_GUARD_0008 = """
CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'events are append-only'; END; $$
"""
SQLITE_GUARD = """
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM events_prune_gate g WHERE OLD.occurred_at < g.older_than)
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
"""
SQLITE_GUARD_0008 = """
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END
"""


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", BIGINT, primary_key=True),
        sa.Column("aggregate_type", sa.String(32), nullable=False),
        sa.Column("aggregate_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", UTC_TS, nullable=False),
        sa.Column("horizon", sa.Boolean(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
    )
    op.create_index(
        "uq_snapshots_aggregate_version",
        "snapshots",
        ["aggregate_type", "aggregate_id", "version"],
        unique=True,
    )
    op.create_index(
        "ix_snapshots_aggregate_time",
        "snapshots",
        ["aggregate_type", "aggregate_id", "occurred_at"],
    )
    op.create_table(
        "events_prune_gate",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("older_than", UTC_TS, nullable=False),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_events_prune_gate"),
    )
    op.create_index(
        "ix_events_aggregate_time",
        "events",
        ["aggregate_type", "aggregate_id", "occurred_at", "id"],
    )
    op.drop_index("ix_events_aggregate", table_name="events")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_GUARD)  # the trigger 0001 made calls this function
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
        op.execute(SQLITE_GUARD)
    _baseline()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_GUARD_0008)
    else:
        op.execute("DROP TRIGGER IF EXISTS events_no_delete")
        op.execute(SQLITE_GUARD_0008)
    op.create_index("ix_events_aggregate", "events", ["aggregate_type", "aggregate_id", "id"])
    op.drop_index("ix_events_aggregate_time", table_name="events")
    op.drop_table("events_prune_gate")
    op.drop_index("ix_snapshots_aggregate_time", table_name="snapshots")
    op.drop_index("uq_snapshots_aggregate_version", table_name="snapshots")
    op.drop_table("snapshots")


# The baseline: a frozen copy of the state the events' fold builds (app/core/history.py), taken
# from the rows as they are now. Core table clauses only: the models may change after this.

users = sa.table(
    "users",
    sa.column("id", BIGINT),
    sa.column("public_id", sa.Uuid()),
    sa.column("email", sa.String()),
    sa.column("username", sa.String()),
    sa.column("display_name", sa.String()),
    sa.column("bio", sa.Text()),
    sa.column("is_admin", sa.Boolean()),
    sa.column("created_at", UTC_TS),
    sa.column("updated_at", UTC_TS),
    sa.column("deleted_at", UTC_TS),
    sa.column("version", sa.Integer()),
)
posts = sa.table(
    "posts",
    sa.column("id", BIGINT),
    sa.column("public_id", sa.Uuid()),
    sa.column("author_id", BIGINT),
    sa.column("title", sa.String()),
    sa.column("slug", sa.String()),
    sa.column("body", sa.Text()),
    sa.column("status", sa.String()),
    sa.column("published_at", UTC_TS),
    sa.column("created_at", UTC_TS),
    sa.column("updated_at", UTC_TS),
    sa.column("deleted_at", UTC_TS),
    sa.column("version", sa.Integer()),
)
snapshots = sa.table(
    "snapshots",
    sa.column("aggregate_type", sa.String()),
    sa.column("aggregate_id", sa.Uuid()),
    sa.column("version", sa.Integer()),
    sa.column("occurred_at", UTC_TS),
    sa.column("horizon", sa.Boolean()),
    sa.column("state", sa.JSON()),
)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    moment = _utc(value)
    return moment.isoformat() if moment is not None else None


def _stored(value: datetime | None, sqlite: bool) -> datetime | None:
    """As the app's UTC column type writes it (naive UTC on SQLite)."""
    moment = _utc(value)
    return moment.replace(tzinfo=None) if sqlite and moment is not None else moment


def _baseline() -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    author = users.alias("author")
    sources: list[tuple[str, Any, Any]] = [
        (
            "user",
            sa.select(users).select_from(users),
            lambda r: {
                "email": r.email,
                "username": r.username,
                "display_name": r.display_name,
                "bio": r.bio,
                "is_admin": bool(r.is_admin),
            },
        ),
        (
            "post",
            sa.select(posts, author.c.public_id.label("author_public_id")).select_from(
                posts.join(author, author.c.id == posts.c.author_id)
            ),
            lambda r: {
                "author_id": str(r.author_public_id),
                "title": r.title,
                "body": r.body,
                "status": r.status,
                "slug": r.slug,
                "published_at": _iso(r.published_at),
            },
        ),
    ]
    for kind, select, fields in sources:
        table = users if kind == "user" else posts
        last = 0
        while True:
            rows = bind.execute(
                select.where(table.c.id > last).order_by(table.c.id).limit(BATCH)
            ).all()
            if not rows:
                break
            last = rows[-1].id
            batch = []
            for row in rows:
                state = {
                    **fields(row),
                    "created_at": _iso(row.created_at),
                    "updated_at": _iso(row.updated_at),
                }
                if row.deleted_at is not None:
                    state["deleted_at"] = _iso(row.deleted_at)
                batch.append(
                    {
                        "aggregate_type": kind,
                        "aggregate_id": row.public_id,
                        "version": row.version,
                        "occurred_at": _stored(row.updated_at, sqlite),
                        "horizon": True,
                        "state": state,
                    }
                )
            bind.execute(sa.insert(snapshots), batch)
