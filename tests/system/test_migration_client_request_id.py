"""Migration 0007 (events.client_request_id): down and up again on each backend, and the events
table stays append-only throughout (a rebuilt SQLite table would have lost 0001's triggers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests.support.backends import DATABASE_URL, test_config
from tests.support.scratch_db import scratch_database


@pytest.fixture
def scratch_database_uri(tmp_path) -> Iterator[str]:
    with scratch_database(DATABASE_URL, tmp_path, "mig6") as uri:
        yield uri


def _columns() -> set[str]:
    return {column["name"] for column in sa.inspect(db.engine).get_columns("events")}


def _assert_append_only() -> None:
    db.session.execute(
        sa.text(
            "INSERT INTO events (event_type, aggregate_type, aggregate_id, aggregate_version,"
            " occurred_at, data) VALUES ('x.test', 'x', :id, 1, CURRENT_TIMESTAMP, '{}')"
        ),
        {"id": uuid.uuid4().hex},
    )
    db.session.commit()
    for statement in ("UPDATE events SET event_type = 'changed'", "DELETE FROM events"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            db.session.execute(sa.text(statement))
        db.session.rollback()


def test_client_request_id_goes_down_and_up_keeping_events_append_only(
    scratch_database_uri: str,
) -> None:
    app = create_app(test_config(scratch_database_uri))
    with app.app_context():
        upgrade(revision="0007")
        assert "client_request_id" in _columns()
        downgrade(revision="0006")
        db.session.remove()
        assert "client_request_id" not in _columns()
        assert "request_id" in _columns()
        _assert_append_only()
        upgrade(revision="0007")
        db.session.remove()
        assert "client_request_id" in _columns()
        _assert_append_only()
        db.session.remove()
        db.engine.dispose()
