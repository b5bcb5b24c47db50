"""Migrations: upgrade -> downgrade to base -> upgrade on each backend, and models match the DDL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests.support.backends import DATABASE_URL, ON_POSTGRES, test_config
from tests.support.scratch_db import scratch_database

APP_TABLES = {
    "users",
    "posts",
    "events",
    "revoked_tokens",
    "idempotency_keys",
    "backfill_runs",
    "snapshots",
    "events_prune_gate",
    "outbox",
    "outbox_shards",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
}


@pytest.fixture
def scratch_database_uri(tmp_path) -> Iterator[str]:
    """A database of this test's own, so the round trip never touches the suite's database."""
    with scratch_database(DATABASE_URL, tmp_path, "mig") as uri:
        yield uri


def _tables() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names()) & APP_TABLES


def test_upgrade_downgrade_upgrade(scratch_database_uri: str) -> None:
    app = create_app(test_config(scratch_database_uri))
    with app.app_context():
        upgrade()
        assert _tables() == APP_TABLES
        downgrade(revision="base")
        db.session.remove()
        assert _tables() == set()
        upgrade()
        assert _tables() == APP_TABLES
        with db.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version is not None
        db.engine.dispose()


def test_models_match_migrated_schema(scratch_database_uri: str) -> None:
    """What the models declare is what the migrations built (no drift either way)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    app = create_app(test_config(scratch_database_uri))
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, db.metadata)
        db.engine.dispose()
    if not ON_POSTGRES:
        # SQLite cannot reflect expression or DESC indexes, so alembic reports each of ours as
        # missing there; Postgres compares them for real.
        diff = [d for d in diff if not (isinstance(d, tuple) and d[0].endswith("_index"))]
    assert diff == []


def test_events_are_append_only(app) -> None:
    """The database itself refuses to change or remove an event."""
    with app.app_context():
        db.session.execute(
            sa.text(
                "INSERT INTO events (event_id, event_type, aggregate_type, aggregate_id,"
                " aggregate_version, occurred_at, data)"
                " VALUES (:event_id, 'x.test', 'x', :id, 1, CURRENT_TIMESTAMP, '{}')"
            ),
            {"event_id": uuid.uuid4().hex, "id": uuid.uuid4().hex},
        )
        db.session.commit()
        for statement in ("UPDATE events SET event_type = 'changed'", "DELETE FROM events"):
            with pytest.raises(sa.exc.DatabaseError, match="append-only"):
                db.session.execute(sa.text(statement))
            db.session.rollback()
        assert db.session.execute(sa.text("SELECT event_type FROM events")).scalar() == "x.test"
        db.session.remove()
