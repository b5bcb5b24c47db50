"""Migration 0011 (webhooks): its three tables come with it and go with it, on each backend;
what was there before stays; the database itself keeps one delivery per (webhook, event) and
a known status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db
from tests import factories
from tests.support.backends import DATABASE_URL, test_config
from tests.support.scratch_db import scratch_database
from tests.support.webhooks import add_delivery, new_webhook

WEBHOOK_TABLES = {"webhooks", "webhook_deliveries", "webhook_attempts"}


@pytest.fixture
def scratch_database_uri(tmp_path) -> Iterator[str]:
    with scratch_database(DATABASE_URL, tmp_path, "mig11") as uri:
        yield uri


def _tables() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def _count(table: str) -> int:
    return int(db.session.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)


def test_0011_goes_up_and_down_keeping_what_was_there(scratch_database_uri: str) -> None:
    app = create_app(test_config(scratch_database_uri))
    with app.app_context():
        upgrade(revision="0010")
        assert not (WEBHOOK_TABLES & _tables())
        db.session.remove()
    client = app.test_client()
    account = factories.make_account(client, app)
    with app.app_context():
        upgrade(revision="0011")
        assert _tables() >= WEBHOOK_TABLES
        db.session.remove()

    hook = new_webhook(client, account)
    add_delivery(app, hook, codes=(500, 500, 500))
    with app.app_context():
        assert (_count("webhook_deliveries"), _count("webhook_attempts")) == (1, 3)
        # One delivery per (webhook, event): the feed is at least once.
        row = db.session.execute(
            sa.text("SELECT webhook_id, event_id FROM webhook_deliveries")
        ).one()
        with pytest.raises(sa.exc.IntegrityError):
            db.session.execute(
                sa.text(
                    "INSERT INTO webhook_deliveries (public_id, webhook_id, event_id, event_type,"
                    " payload, status, attempts, created_at) VALUES (:p, :w, :e, 'x', '{}',"
                    " 'pending', 0, CURRENT_TIMESTAMP)"
                ),
                {"p": "0" * 32, "w": row.webhook_id, "e": row.event_id},
            )
        db.session.rollback()
        with pytest.raises(sa.exc.IntegrityError):  # the status is one of three
            db.session.execute(sa.text("UPDATE webhook_deliveries SET status = 'lost'"))
        db.session.rollback()

        downgrade(revision="0010")
        db.session.remove()
        assert not (WEBHOOK_TABLES & _tables())
        assert _count("users") == 1
        upgrade()
        db.session.remove()
        assert _tables() >= WEBHOOK_TABLES
        assert _count("webhooks") == 0
        db.session.remove()
        db.engine.dispose()
