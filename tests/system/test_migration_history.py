"""Migration 0009 (history): rows written before it get a horizon snapshot (their baseline), so
`as_of` answers from then on and says 422 before; down and up again, the events stay
append-only on each backend."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask_migrate import downgrade, upgrade

from app import create_app
from app.core.outbox import Outbox
from app.extensions import db
from tests import factories
from tests.support.backends import DATABASE_URL, test_config
from tests.support.scratch_db import scratch_database


@pytest.fixture
def scratch_database_uri(tmp_path) -> Iterator[str]:
    with scratch_database(DATABASE_URL, tmp_path, "mig9") as uri:
        yield uri


def _tables() -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def _assert_append_only() -> None:
    for statement in ("UPDATE events SET event_type = 'changed'", "DELETE FROM events"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            db.session.execute(sa.text(statement))
        db.session.rollback()


def test_rows_before_0009_get_a_baseline_and_the_migration_goes_down_and_up(
    scratch_database_uri: str,
) -> None:
    app = create_app(test_config(scratch_database_uri))
    with app.app_context():
        upgrade(revision="0008")
        # Today's writes also queue an outbox row (0010): the table stands in for it here.
        Outbox.__table__.create(db.engine)
        db.session.remove()
    client = app.test_client()
    account = factories.make_account(client, app)
    post = account.post_as("Before 0009", status="published")
    patched = client.patch(
        f"/api/posts/{post['id']}", json={"title": "Still before"}, headers=account.headers
    ).json["data"]
    gone = account.post_as("Deleted before 0009")
    assert client.delete(f"/api/posts/{gone['id']}", headers=account.headers).status_code == 204

    with app.app_context():
        upgrade(revision="0009")
        rows = db.session.execute(
            sa.text("SELECT aggregate_type, version, horizon FROM snapshots ORDER BY id")
        ).all()
        db.session.remove()
    assert sorted((kind, version, bool(h)) for kind, version, h in rows) == [
        ("post", 2, True),
        ("post", 2, True),
        ("user", 1, True),
    ]

    def as_of(path: str, instant: str) -> object:
        return client.get(f"{path}?as_of={quote(instant, safe='')}", headers=account.headers)

    path = f"/api/posts/{post['id']}"
    assert as_of(path, patched["updated_at"]).json["data"] == patched  # from the baseline
    before = as_of(path, post["updated_at"])  # history before the baseline is not kept
    assert before.status_code == 422
    assert before.json["error"]["details"][0]["field"] == "as_of"
    assert as_of(path, "2020-01-01T00:00:00Z").status_code == 404  # before it existed
    assert as_of(f"/api/posts/{gone['id']}", "2999-01-01T00:00:00Z").status_code == 404
    # later writes replay from the baseline
    later = client.patch(path, json={"body": "after 0009"}, headers=account.headers).json["data"]
    assert as_of(path, later["updated_at"]).json["data"] == later
    me = client.get(f"/api/users/{account.id}", headers=account.headers).json["data"]
    assert as_of(f"/api/users/{account.id}", me["updated_at"]).json["data"] == me

    with app.app_context():
        _assert_append_only()
        downgrade(revision="0008")
        db.session.remove()
        assert "snapshots" not in _tables()
        assert "events_prune_gate" not in _tables()
        _assert_append_only()
        upgrade(revision="0009")
        db.session.remove()
        assert {"snapshots", "events_prune_gate"} <= _tables()
        _assert_append_only()
        count = db.session.scalar(sa.text("SELECT count(*) FROM events"))
        assert count == 6  # user, 2 x post.created, post.updated, post.deleted, post.updated
        db.session.remove()
        Outbox.__table__.drop(db.engine)
        db.engine.dispose()
