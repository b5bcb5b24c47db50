"""The transactional outbox: every committed event has its outbox row, written in the write's
own transaction; a refused or crashed write leaves none; and the JSON the feed carries."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app.core.events import REDACTED, Event, event_json
from app.core.outbox import SHARDS, Outbox, OutboxShard, shard_of
from app.extensions import db
from tests.factories import Account
from tests.support.assertions import assert_error
from tests.support.metrics import parse, value


def outbox_and_events(app: Flask) -> tuple[list[Outbox], list[Event]]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(Outbox).order_by(Outbox.id)))
        events = list(db.session.scalars(sa.select(Event).order_by(Event.id)))
        db.session.remove()
    return rows, events


def test_every_committed_event_has_its_outbox_row_in_commit_order(
    app: Flask, account: Account
) -> None:
    post = account.post_as("First")
    patched = account.client.patch(
        f"/api/posts/{post['id']}", json={"title": "Second"}, headers=account.headers
    )
    assert patched.status_code == 200
    rows, events = outbox_and_events(app)
    # user.created, post.created, post.updated: one outbox row each, in the same order.
    assert [e.event_type for e in events] == ["user.created", "post.created", "post.updated"]
    assert [row.event_id for row in rows] == [e.event_id for e in events]
    assert [row.shard for row in rows] == [shard_of(e.aggregate_id) for e in events]
    assert all(0 <= row.shard < SHARDS for row in rows)


def test_the_shards_are_seeded_free(app: Flask) -> None:
    with app.app_context():
        shards = db.session.execute(sa.select(OutboxShard.shard, OutboxShard.owner)).all()
        db.session.remove()
    assert sorted(shards) == [(n, None) for n in range(SHARDS)]


def test_refused_writes_leave_neither_event_nor_outbox_row(
    app: Flask, account: Account, other: Account, row_counts: Callable[[], dict[str, int]]
) -> None:
    post = account.post_as("Mine", body="Text.", status="published")
    before = row_counts()
    url = f"/api/posts/{post['id']}"
    # validation (400), someone else's post (403), a stale If-Match (412), a taken email (409)
    assert_error(
        account.client.patch(url, json={"title": ""}, headers=account.headers),
        400,
        "VALIDATION_ERROR",
    )
    assert_error(
        other.client.patch(url, json={"title": "x"}, headers=other.headers), 403, "FORBIDDEN"
    )
    stale = {**account.headers, "If-Match": '"v999"'}
    assert account.client.patch(url, json={"title": "x"}, headers=stale).status_code == 412
    taken = account.client.patch(
        f"/api/users/{account.id}", json={"email": other.email}, headers=account.headers
    )
    assert_error(taken, 409, "CONFLICT")
    assert row_counts() == before


def test_a_crash_at_commit_leaves_neither_write_nor_event_nor_outbox_row(
    app: Flask,
    account: Account,
    row_counts: Callable[[], dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The outbox row is inserted, then the commit itself fails: everything rolls back."""
    before = row_counts()
    real_commit = Session.commit
    inserted: list[int] = []

    def crash(session: Session) -> None:
        inserted.append(session.scalar(sa.select(sa.func.count()).select_from(Outbox)) or 0)
        raise RuntimeError("injected: the process dies at commit")

    monkeypatch.setattr(Session, "commit", crash)
    response = account.client.post(
        f"/api/users/{account.id}/posts", json={"title": "Lost"}, headers=account.headers
    )
    monkeypatch.setattr(Session, "commit", real_commit)
    assert response.status_code == 500
    # The rows were written inside the transaction (the post's outbox row among them)...
    assert inserted
    assert inserted[0] == before["outbox"] + 1
    # ...and none survived it.
    assert row_counts() == before


def test_event_json_is_the_contract_record(app: Flask, account: Account) -> None:
    changed = account.client.patch(
        f"/api/users/{account.id}",
        json={
            "display_name": "Ada",
            "password": "a new passphrase",
            "current_password": "correct horse battery",
        },
        headers={**account.headers, "X-Request-ID": "client-req-1"},
    )
    assert changed.status_code == 200, changed.json
    _, events = outbox_and_events(app)
    updated = events[-1]
    record = event_json(updated)
    assert record == {
        "id": str(updated.event_id),
        "type": "user.updated",
        "aggregate": {"type": "user", "id": account.id},
        "actor_id": account.id,
        "occurred_at": updated.occurred_at.isoformat(),
        "version": 2,
        "changes": {
            "display_name": "Ada",
            "updated_at": changed.json["data"]["updated_at"],
            "password": REDACTED,
        },
        "request_id": updated.request_id,
    }
    # The server's request id, never the client's; no secret value anywhere.
    assert record["request_id"]
    assert record["request_id"] != "client-req-1"
    assert "a new passphrase" not in str(record)
    assert uuid.UUID(record["id"]) == updated.event_id


def test_outbox_status_and_a_single_relay_cycle_from_the_cli(
    app: Flask, make_app: Callable[..., Flask], account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    account.post_as("Queued")
    with app.app_context():
        db.session.execute(
            sa.update(OutboxShard)
            .where(OutboxShard.shard == 5)
            .values(owner="relay-x", lease_until=4e9)
        )
        db.session.commit()
        db.session.remove()
    status = app.test_cli_runner().invoke(args=["outbox", "status"])
    assert status.exit_code == 0, status.output
    assert "pending: 2\n" in status.output
    assert "shard 5: held by relay-x" in status.output
    # A relay publishing to an in-memory broker: one cycle takes what is not held.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery would prefer it to ours
    relaying = make_app(CELERY_BROKER_URL="memory://", CELERY_RESULT_BACKEND="cache+memory://")
    with relaying.app_context():
        db.session.execute(sa.update(OutboxShard).values(owner=None, lease_until=0))
        db.session.commit()
        db.session.remove()
    once = relaying.test_cli_runner().invoke(args=["outbox", "relay", "--once"])
    assert once.exit_code == 0, once.output
    assert "published 2, dropped 0" in once.output
    assert "pending: 0\n" in app.test_cli_runner().invoke(args=["outbox", "status"]).output


def test_metrics_show_the_backlog_and_its_age(
    app: Flask, client: FlaskClient, account: Account
) -> None:
    account.post_as("Waiting")
    samples = parse(client.get("/metrics").get_data(as_text=True))
    assert value(samples, "postboard_outbox_pending") == 2
    assert value(samples, "postboard_outbox_oldest_pending_seconds") > 0
    assert "postboard_outbox_published_total" in {name for name, _ in samples}
