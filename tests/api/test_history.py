"""History (contract §8): the event record of every write, the audit trails and `as_of`.

The stateful property test (random write sequences) is tests/api/test_history_properties.py;
retention (`flask events prune`) is tests/api/test_events_prune.py.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from app.core.events import REDACTED
from app.extensions import db
from tests.api.test_pagination import parse_link, walk_cursor
from tests.factories import PASSWORD, Account
from tests.support.assertions import assert_error
from tests.support.history import as_of, events_of, replayed_view, row_view, snapshots_of

EVENT_KEYS = {
    "id",
    "type",
    "aggregate",
    "actor_id",
    "occurred_at",
    "version",
    "changes",
    "request_id",
}


def trail(client: Any, path: str, account: Account, **query: Any) -> list[dict[str, Any]]:
    response = client.get(f"{path}/events", query_string=query, headers=account.headers)
    assert response.status_code == 200, response.json
    return response.json["data"]


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


# Audit trail: who may read it --------------------------------------------------------------------


def test_audit_trail_permissions(client, account, other, admin) -> None:
    published = account.post_as("Out", status="published")
    draft = account.post_as("In progress")
    user_path = f"/api/users/{account.id}/events"
    for path in (
        user_path,
        f"/api/posts/{published['id']}/events",
        f"/api/posts/{draft['id']}/events",
    ):
        assert client.get(path, headers=account.headers).status_code == 200
        assert client.get(path, headers=admin.headers).status_code == 200
        assert_error(client.get(path), 401, "UNAUTHENTICATED")
    assert_error(client.get(user_path, headers=other.headers), 403, "FORBIDDEN")
    assert_error(
        client.get(f"/api/posts/{published['id']}/events", headers=other.headers), 403, "FORBIDDEN"
    )
    # someone else's draft is as absent as for a reader; an unknown id is 404
    assert_error(
        client.get(f"/api/posts/{draft['id']}/events", headers=other.headers), 404, "NOT_FOUND"
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"/api/users/{unknown}/events", f"/api/posts/{unknown}/events"):
        assert_error(client.get(path, headers=admin.headers), 404, "NOT_FOUND")
    assert_error(
        client.get("/api/posts/not-a-uuid/events", headers=admin.headers), 404, "NOT_FOUND"
    )


def test_history_outlives_a_delete_for_its_owner_and_admins(client, account, other, admin) -> None:
    post = account.post_as("Short-lived", status="published")
    assert client.delete(f"/api/posts/{post['id']}", headers=account.headers).status_code == 204
    path = f"/api/posts/{post['id']}/events"
    assert [e["type"] for e in client.get(path, headers=account.headers).json["data"]][-1] == (
        "post.deleted"
    )
    assert_error(client.get(path, headers=other.headers), 404, "NOT_FOUND")
    assert client.delete(f"/api/users/{other.id}", headers=other.headers).status_code == 204
    assert client.get(f"/api/users/{other.id}/events", headers=admin.headers).status_code == 200
    assert_error(
        client.get(f"/api/users/{other.id}/events", headers=account.headers), 404, "NOT_FOUND"
    )


# Audit trail: pages, ETags, limits ---------------------------------------------------------------


def test_audit_trail_pages_oldest_first_in_both_modes(client, account) -> None:
    post = account.post_as("v1")
    for n in range(2, 8):
        assert (
            client.patch(
                f"/api/posts/{post['id']}", json={"title": f"v{n}"}, headers=account.headers
            ).status_code
            == 200
        )
    path = f"/api/posts/{post['id']}/events"
    first = client.get(path, query_string={"per_page": 3}, headers=account.headers)
    assert first.json["meta"]["page"] == 1
    assert first.json["meta"]["total"] == 7
    assert [e["version"] for e in first.json["data"]] == [1, 2, 3]
    assert parse_link(first) is not None
    third = client.get(path, query_string={"per_page": 3, "page": 3}, headers=account.headers)
    assert [e["version"] for e in third.json["data"]] == [7]
    assert third.json["meta"]["next_cursor"] is None
    assert parse_link(third) is None
    walked = walk_cursor(client, path, 2, headers=account.headers)
    assert [e["version"] for e in walked] == [1, 2, 3, 4, 5, 6, 7]
    occurred = [e["occurred_at"] for e in walked]
    assert occurred == sorted(occurred)
    tampered = client.get(
        path,
        query_string={"cursor": "x" + first.json["meta"]["next_cursor"][1:]},
        headers=account.headers,
    )
    assert_error(tampered, 400, "VALIDATION_ERROR")
    # a cursor of another list is refused too
    other_list = client.get("/api/posts?per_page=1&page=1").json["meta"]["next_cursor"]
    if other_list:
        assert (
            client.get(
                path, query_string={"cursor": other_list}, headers=account.headers
            ).status_code
            == 400
        )
    assert_error(
        client.get(path, query_string={"per_page": 101}, headers=account.headers),
        400,
        "VALIDATION_ERROR",
    )


def test_audit_trail_etag_gives_304_until_a_new_event(client, account) -> None:
    path = f"/api/users/{account.id}/events"
    first = client.get(path, headers=account.headers)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == "private, no-cache"
    again = client.get(path, headers={**account.headers, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert (
        client.patch(
            f"/api/users/{account.id}", json={"bio": "new"}, headers=account.headers
        ).status_code
        == 200
    )
    changed = client.get(path, headers={**account.headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag


def test_audit_trail_is_rate_limited(make_app, make_account) -> None:
    limited = make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTHENTICATED="3/minute")
    client = limited.test_client()
    from tests import factories

    account = factories.make_account(client, limited)
    path = f"/api/users/{account.id}/events"
    statuses = []
    for _ in range(4):
        response = client.get(path, headers=account.headers)
        assert "X-RateLimit-Remaining" in response.headers
        statuses.append(response.status_code)
    assert statuses[-1] == 429


# as_of -------------------------------------------------------------------------------------------


def test_as_of_answers_what_get_answered_then(client, account) -> None:
    post = account.post_as("Then")
    path = f"/api/posts/{post['id']}"
    time.sleep(0.002)
    later = client.patch(
        path, json={"title": "Now", "status": "published"}, headers=account.headers
    )
    now = later.json["data"]
    at_create = client.get(as_of(path, post["updated_at"]), headers=account.headers)
    assert at_create.status_code == 200
    assert at_create.json == {"data": post}
    assert at_create.headers["ETag"] == '"v1"'
    between = _midpoint(post["updated_at"], now["updated_at"])
    assert client.get(as_of(path, between), headers=account.headers).json["data"] == post
    assert client.get(as_of(path, now["updated_at"]), headers=account.headers).json["data"] == now
    # a + left unencoded arrives as a space: still read as the offset it was
    raw = client.get(f"{path}?as_of={now['updated_at']}", headers=account.headers)
    assert raw.json["data"] == now
    # Z and other offsets name the same instants
    zulu = now["updated_at"].replace("+00:00", "Z")
    assert client.get(as_of(path, zulu), headers=account.headers).json["data"] == now
    # If-None-Match works as for a plain GET
    assert (
        client.get(
            as_of(path, post["updated_at"]), headers={**account.headers, "If-None-Match": '"v1"'}
        ).status_code
        == 304
    )


def test_as_of_is_404_before_creation_and_while_deleted(client, account) -> None:
    post = account.post_as("Brief", status="published")
    path = f"/api/posts/{post['id']}"
    assert_error(
        client.get(as_of(path, "2020-01-01T00:00:00Z"), headers=account.headers), 404, "NOT_FOUND"
    )
    just_before = _shift(post["created_at"], -1)
    assert_error(client.get(as_of(path, just_before), headers=account.headers), 404, "NOT_FOUND")
    assert client.delete(path, headers=account.headers).status_code == 204
    (deleted,) = trail(client, path, account)[-1:]
    assert_error(
        client.get(as_of(path, deleted["occurred_at"]), headers=account.headers), 404, "NOT_FOUND"
    )
    assert (
        client.get(as_of(path, _shift(deleted["occurred_at"], -1)), headers=account.headers).json[
            "data"
        ]
        == post
    )
    # far in the future: still deleted
    assert_error(
        client.get(as_of(path, "2999-01-01T00:00:00Z"), headers=account.headers), 404, "NOT_FOUND"
    )


@pytest.mark.parametrize(
    "value",
    ["2020-01-01", "2020-01-01T00:00:00", "yesterday", "", "2020-13-01T00:00:00Z", "9" * 65],
)
def test_as_of_malformed_is_400_naming_the_field(client, account, value) -> None:
    path = f"/api/users/{account.id}"
    error = assert_error(
        client.get(as_of(path, value), headers=account.headers), 400, "VALIDATION_ERROR"
    )
    assert [d["field"] for d in error["details"]] == ["as_of"]


def test_as_of_is_for_the_owner_and_admins(client, account, other, admin) -> None:
    published = account.post_as("Public", status="published")
    draft = account.post_as("Private")
    instant = draft["updated_at"]
    for path in (f"/api/users/{account.id}", f"/api/posts/{published['id']}"):
        assert client.get(as_of(path, instant), headers=admin.headers).status_code == 200
        assert_error(client.get(as_of(path, instant), headers=other.headers), 403, "FORBIDDEN")
        # anonymous: 401 (even with a malformed instant: a 401 answers before a 400)
        assert_error(client.get(as_of(path, instant)), 401, "UNAUTHENTICATED")
        assert_error(client.get(as_of(path, "nonsense")), 401, "UNAUTHENTICATED")
    assert_error(
        client.get(as_of(f"/api/posts/{draft['id']}", instant), headers=other.headers),
        404,
        "NOT_FOUND",
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(
        client.get(as_of(f"/api/posts/{unknown}", instant), headers=admin.headers), 404, "NOT_FOUND"
    )


def test_user_as_of_shows_the_email_they_had(client, account, admin) -> None:
    before = client.get(f"/api/users/{account.id}", headers=account.headers).json["data"]
    time.sleep(0.002)
    assert (
        client.patch(
            f"/api/users/{account.id}", json={"email": "moved@example.com"}, headers=account.headers
        ).status_code
        == 200
    )
    then = client.get(
        as_of(f"/api/users/{account.id}", before["updated_at"]), headers=admin.headers
    )
    assert then.json["data"] == before
    assert then.json["data"]["email"] == account.email
    assert then.headers["ETag"] == f'"v{before["version"]}-private"'
    me = client.get(as_of("/api/me", before["updated_at"]), headers=account.headers)
    assert me.json["data"] == before


def test_as_of_by_slug_answers_like_by_id(client, account) -> None:
    post = account.post_as("Slugged")
    assert (
        client.patch(
            f"/api/posts/{post['id']}", json={"title": "Renamed"}, headers=account.headers
        ).status_code
        == 200
    )
    by_slug = client.get(
        as_of(f"/api/posts/by-slug/{post['slug']}", post["updated_at"]), headers=account.headers
    )
    assert by_slug.json["data"] == post


def test_as_of_is_never_answered_from_the_cache(client, account) -> None:
    """A cached entry is the current state: an as_of read (or an anonymous one) must not get it."""
    post = account.post_as("Old title", status="published")
    path = f"/api/posts/{post['id']}"
    assert (
        client.patch(path, json={"title": "New title"}, headers=account.headers).status_code == 200
    )
    for _ in range(2):  # the second plain read is the cached one
        assert client.get(path).json["data"]["title"] == "New title"
    assert_error(client.get(as_of(path, post["updated_at"])), 401, "UNAUTHENTICATED")
    then = client.get(as_of(path, post["updated_at"]), headers=account.headers)
    assert then.json["data"]["title"] == "Old title"


def test_snapshots_bound_the_replay(make_app) -> None:
    """With a snapshot every 5 events, as_of starts from the latest snapshot at or before the
    instant: a snapshot changed by hand (derived data may be rewritten) shows in the answer."""
    from app.core.events import Snapshot
    from tests import factories

    every5 = make_app(EVENTS_SNAPSHOT_EVERY=5)
    client = every5.test_client()
    account = factories.make_account(client, every5)
    post = account.post_as("v1")
    bodies = [post]
    for n in range(2, 13):
        response = client.patch(
            f"/api/posts/{post['id']}", json={"title": f"v{n}"}, headers=account.headers
        )
        bodies.append(response.json["data"])
    events = events_of(every5, post["id"])
    snapshots = snapshots_of(every5, post["id"])
    assert [v for v, _h, _s in snapshots] == [5, 10]
    assert not any(h for _v, h, _s in snapshots)
    from tests.support.history import fold_states

    states = fold_states(events)
    for version, _horizon, state in snapshots:
        assert state == states[version]
    path = f"/api/posts/{post['id']}"
    for body in bodies:
        assert (
            client.get(as_of(path, body["updated_at"]), headers=account.headers).json["data"]
            == body
        )
    with every5.app_context():
        snapshot = db.session.scalar(sa.select(Snapshot).where(Snapshot.version == 10))
        snapshot.state = {**snapshot.state, "body": "from the snapshot"}
        db.session.commit()
        db.session.remove()
    answered = client.get(as_of(path, bodies[11]["updated_at"]), headers=account.headers)
    assert answered.json["data"]["body"] == "from the snapshot"  # v12 = snapshot v10 + 2 events
    assert answered.json["data"]["title"] == "v12"
    earlier = client.get(as_of(path, bodies[8]["updated_at"]), headers=account.headers)
    assert earlier.json["data"] == bodies[8]  # v9 = snapshot v5 + 4 events


def test_history_is_in_the_openapi_document(client) -> None:
    spec = client.get("/api/openapi.json").json
    paths = spec["paths"]
    for path in ("/api/users/{user_id}/events", "/api/posts/{post_id}/events"):
        get = paths[path]["get"]
        names = {p["name"] for p in get["parameters"]}
        assert {"page", "per_page", "cursor"} <= names
        assert {"200", "304", "400", "401", "403", "404", "429"} <= set(get["responses"])
    for path in ("/api/users/{user_id}", "/api/posts/{post_id}"):
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == "as_of"]
        assert param["in"] == "query"
        assert param["schema"]["format"] == "date-time"
    event = spec["components"]["schemas"]["Event"]
    assert set(event["properties"]) == EVENT_KEYS


# Helpers -----------------------------------------------------------------------------------------


def _shift(instant: str, microseconds: int) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(instant) + timedelta(microseconds=microseconds)).isoformat()


def _midpoint(a: str, b: str) -> str:
    from datetime import datetime

    start, end = datetime.fromisoformat(a), datetime.fromisoformat(b)
    return (start + (end - start) / 2).isoformat()
