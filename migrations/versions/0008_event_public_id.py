"""events.event_id: each event's public uuid (the contract's event `id`, which consumers of the
outbox feed deduplicate by); the integer `id` stays the log's internal commit-order key.

Existing rows get a random uuid. The append-only guard is lifted for that one backfill and put
back; SQLite rebuilds the table for NOT NULL (batch mode), which drops its triggers, so the
guard is re-created after the rebuild on both backends.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    _drop_append_only_guard()
    op.add_column("events", sa.Column("event_id", sa.Uuid(), nullable=True))
    # sa.Uuid is a native uuid on PostgreSQL and 32 hex characters on SQLite.
    op.execute(
        "UPDATE events SET event_id = gen_random_uuid()"
        if postgres
        else "UPDATE events SET event_id = lower(hex(randomblob(16)))"
    )
    with op.batch_alter_table("events") as batch:
        batch.alter_column("event_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_unique_constraint("uq_events_event_id", ["event_id"])
    _create_append_only_guard()


def downgrade() -> None:
    _drop_append_only_guard()
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_event_id", type_="unique")
        batch.drop_column("event_id")
    _create_append_only_guard()


def _create_append_only_guard() -> None:
    """As 0001 made it: the database refuses UPDATE and DELETE on events."""
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
