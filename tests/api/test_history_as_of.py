"""History (contract §8), temporal reads: `GET /api/users/{id}?as_of=T` and
`GET /api/posts/{id}?as_of=T` (and by slug, /api/me): what a GET answered then, 404 before
creation and while deleted, 400 for a malformed instant, the owner and admins only, never from
the cache, bounded by snapshots.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from app.extensions import db
from tests.support.assertions import assert_error
from tests.support.history import (
    as_of,
    events_of,
    midpoint,
    shift,
    snapshots_of,
    trail,
)

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
    between = midpoint(post["updated_at"], now["updated_at"])
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
    just_before = shift(post["created_at"], -1)
    assert_error(client.get(as_of(path, just_before), headers=account.headers), 404, "NOT_FOUND")
    assert client.delete(path, headers=account.headers).status_code == 204
    (deleted,) = trail(client, path, account)[-1:]
    assert_error(
        client.get(as_of(path, deleted["occurred_at"]), headers=account.headers), 404, "NOT_FOUND"
    )
    assert (
        client.get(as_of(path, shift(deleted["occurred_at"], -1)), headers=account.headers).json[
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
