"""History (contract §8), the event record: every write of users and posts is one event with the
contract's fields, changes enough to rebuild the resource, secrets by name only; a write that
fails leaves none. The audit trail is tests/api/test_history_trail.py, `as_of`
tests/api/test_history_as_of.py, the stateful property test test_history_properties.py and
retention test_events_prune.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import sqlalchemy as sa

from app.core.events import REDACTED
from app.extensions import db
from tests.factories import PASSWORD
from tests.support.assertions import assert_error
from tests.support.history import (
    EVENT_KEYS,
    events_of,
    replayed_view,
    row_view,
    trail,
)

# The event record --------------------------------------------------------------------------------


def test_every_post_write_is_an_event_with_the_contracts_fields(client, account) -> None:
    post = account.post_as("First", body="one")
    path = f"/api/posts/{post['id']}"
    writes = [
        client.patch(path, json={"title": "Second"}, headers=account.headers),
        client.put(
            path, json={"title": "Third", "body": "two", "status": "draft"}, headers=account.headers
        ),
        client.patch(path, json={"status": "published"}, headers=account.headers),
        client.patch(path, json={"status": "draft"}, headers=account.headers),
    ]
    bodies = [post] + [w.json["data"] for w in writes]
    deleted = client.delete(path, headers=account.headers)
    assert deleted.status_code == 204
    events = trail(client, path, account)
    assert [e["type"] for e in events] == ["post.created"] + ["post.updated"] * 4 + ["post.deleted"]
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5, 6]
    for event, response in zip(events[1:], [*writes, deleted], strict=True):
        assert set(event) == EVENT_KEYS
        assert event["aggregate"] == {"type": "post", "id": post["id"]}
        assert event["actor_id"] == account.id
        assert event["request_id"] == response.headers["X-Request-ID"]  # the server's own
    # changes: field -> new value, every representation field that changed (updated_at too)
    assert events[0]["changes"] == {k: v for k, v in post.items() if k not in ("id", "version")}
    assert events[1]["changes"] == {"title": "Second", "updated_at": bodies[1]["updated_at"]}
    assert events[2]["changes"] == {
        "title": "Third",
        "body": "two",
        "updated_at": bodies[2]["updated_at"],
    }
    assert events[3]["changes"] == {
        "status": "published",
        "published_at": bodies[3]["published_at"],
        "updated_at": bodies[3]["updated_at"],
    }
    assert events[4]["changes"]["published_at"] is None
    assert events[5]["changes"] == {
        "deleted_at": events[5]["occurred_at"],
        "updated_at": events[5]["occurred_at"],
    }
    for event, body in zip(events, bodies, strict=False):
        assert event["occurred_at"] == body["updated_at"]  # the write's own time


def test_a_password_change_is_recorded_by_name_only(app, client, account, admin) -> None:
    new = "another long password"
    changed = client.patch(
        f"/api/users/{account.id}",
        json={"password": new, "current_password": PASSWORD},
        headers=account.headers,
    )
    assert changed.status_code == 200
    reset = client.patch(
        f"/api/users/{account.id}", json={"password": "reset by admin!"}, headers=admin.headers
    )
    assert reset.status_code == 200
    events = trail(client, f"/api/users/{account.id}", admin)
    assert events[-2]["changes"] == {
        "password": REDACTED,
        "updated_at": changed.json["data"]["updated_at"],
    }
    assert events[-1]["changes"]["password"] == REDACTED
    assert events[-1]["actor_id"] == admin.id
    with app.app_context():
        stored = json.dumps(
            [list(r) for r in db.session.execute(sa.text("SELECT * FROM events"))], default=str
        )
        db.session.remove()
    for secret in (PASSWORD, new, "reset by admin!", "$argon2"):
        assert secret not in stored


def test_an_email_change_is_in_the_owners_trail(client, account) -> None:
    changed = client.patch(
        f"/api/users/{account.id}", json={"email": "New@Example.com"}, headers=account.headers
    )
    assert changed.status_code == 200
    (event,) = trail(client, f"/api/users/{account.id}", account)[-1:]
    assert event["changes"] == {
        "email": "new@example.com",
        "updated_at": changed.json["data"]["updated_at"],
    }


def test_a_user_delete_cascades_one_post_deleted_each_in_its_transaction(
    app, client, account, admin
) -> None:
    posts = [account.post_as(f"P{i}", status="published") for i in range(3)]
    gone = client.delete(f"/api/posts/{posts[0]['id']}", headers=account.headers)
    assert gone.status_code == 204
    response = client.delete(f"/api/users/{account.id}", headers=account.headers)
    assert response.status_code == 204
    (user_deleted,) = trail(client, f"/api/users/{account.id}", admin)[-1:]
    assert user_deleted["type"] == "user.deleted"
    for post in posts[1:]:
        events = trail(client, f"/api/posts/{post['id']}", admin)
        assert [e["type"] for e in events] == ["post.created", "post.deleted"]
        cascade = events[-1]
        assert cascade["request_id"] == user_deleted["request_id"]
        assert cascade["occurred_at"] == user_deleted["occurred_at"]
        assert cascade["changes"] == user_deleted["changes"]  # deleted_at, updated_at
        assert cascade["version"] == 2
    # the post deleted before its author has no second post.deleted
    assert len(trail(client, f"/api/posts/{posts[0]['id']}", admin)) == 2
    for kind, public_id in [("user", account.id)] + [("post", p["id"]) for p in posts]:
        _view, deleted = row_view(app, kind, public_id)
        assert deleted
        assert replayed_view(kind, public_id, events_of(app, public_id)) is None


def test_seeded_rows_rebuild_from_their_events(app, client) -> None:
    result = app.test_cli_runner().invoke(args=["seed", "--users", "3", "--posts-per-user", "2"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        ids = db.session.execute(
            sa.text("SELECT aggregate_type, aggregate_id FROM events ORDER BY id")
        ).all()
        db.session.remove()
    assert len(ids) == 9
    for kind, raw in ids:
        public_id = str(raw if isinstance(raw, uuid.UUID) else uuid.UUID(raw))
        view, deleted = row_view(app, kind, public_id)
        assert not deleted
        assert replayed_view(kind, public_id, events_of(app, public_id)) == view


# Failed writes leave no event --------------------------------------------------------------------


def test_refused_writes_leave_no_event(client, account, other, row_counts) -> None:
    post = account.post_as("Mine")
    before = row_counts()
    path = f"/api/posts/{post['id']}"
    assert client.patch(path, json={"title": ""}, headers=account.headers).status_code == 400
    assert client.patch(path, json={"status": "gone"}, headers=account.headers).status_code == 400
    stale = client.patch(
        path, json={"title": "x"}, headers={**account.headers, "If-Match": '"v99"'}
    )
    assert stale.status_code == 412
    taken = client.patch(
        f"/api/users/{account.id}",
        json={"username": other.user["username"]},
        headers=account.headers,
    )
    assert taken.status_code == 409
    assert client.patch(path, json={"title": "x"}, headers=other.headers).status_code == 404
    assert client.delete(f"/api/users/{account.id}", headers=other.headers).status_code == 403
    assert row_counts() == before


def test_a_crash_mid_transaction_leaves_no_write_and_no_event(
    app, client, account, row_counts, monkeypatch
) -> None:
    """A failure after the user row changed, inside the delete's transaction: nothing stays."""
    from app.posts.repository import PostRepository

    post = account.post_as("Survives", status="published")
    before = row_counts()

    def crash(self: Any, *args: Any) -> Any:
        raise RuntimeError("injected failure mid-transaction")

    monkeypatch.setattr(PostRepository, "soft_delete_by_author", crash)
    response = client.delete(f"/api/users/{account.id}", headers=account.headers)
    assert_error(response, 500, "INTERNAL_ERROR")
    assert row_counts() == before
    assert row_view(app, "user", account.id) == (
        replayed_view("user", account.id, events_of(app, account.id)),
        False,
    )
    assert client.get(f"/api/posts/{post['id']}").status_code == 200


def test_a_crash_while_writing_the_snapshot_leaves_no_event(
    make_app, make_account, row_counts, monkeypatch
) -> None:
    """The snapshot is part of the write's transaction: when it fails, the write fails whole."""
    import app.core.uow as uow

    every3 = make_app(EVENTS_SNAPSHOT_EVERY=3)
    client = every3.test_client()
    from tests import factories

    account = factories.make_account(client, every3)
    post = account.post_as("Three writes")
    assert client.patch(f"/api/posts/{post['id']}", json={"title": "2"}, headers=account.headers)
    before = row_counts()

    def crash(*args: Any) -> int:
        raise RuntimeError("injected failure in the snapshot")

    monkeypatch.setattr(uow, "write_due_snapshots", crash)
    response = client.patch(
        f"/api/posts/{post['id']}", json={"title": "3"}, headers=account.headers
    )
    assert_error(response, 500, "INTERNAL_ERROR")
    assert row_counts() == before
    assert (
        client.get(f"/api/posts/{post['id']}", headers=account.headers).json["data"]["title"] == "2"
    )
