"""Cached entries that decide who may do what cannot be forged (issue #13 item 9).

Whoever can write to the cache (Redis, or the embedded default's disk cache) edits a real entry
the way an attacker would; each request must then be decided by the database: Bob still cannot
patch Alice's post, a forged admin flag grants nothing, a forged status leaks no draft. Runs on
both backends (Redis when REDIS_URL is set, else the shared disk cache).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.core.cache import cache_key
from app.extensions import db
from app.posts.cache import POST_KIND
from app.users.cache import USER_KIND
from tests.factories import Account
from tests.support.backends import CACHE_DIR, ON_POSTGRES, REDIS_URL
from tests.support.cache import raw_entry


def write_raw(kind: str, public_id: object, raw: bytes) -> None:
    """Overwrite one entry's bytes, as someone with write access to the cache would."""
    key = cache_key(kind, public_id)
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.set(key, raw, ex=300)
        finally:
            client.close()
        return
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        disk.set(key, raw, expire=300)


def delete_raw(kind: str, public_id: object) -> None:
    key = cache_key(kind, public_id)
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.delete(key)
        finally:
            client.close()
        return
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        disk.delete(key)


def tamper(kind: str, public_id: object, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the data of a cached entry (which must be there) and store it back."""
    raw = raw_entry(kind, public_id)
    assert raw is not None, f"no cached {kind} entry for {public_id}: nothing to tamper with"
    entry = json.loads(raw)
    edit(entry["d"])
    write_raw(kind, public_id, json.dumps(entry).encode())


def cached_user(account: Account) -> dict[str, Any]:
    """The user's cached entry data, filled by an authenticated request."""
    assert account.client.get("/api/me", headers=account.headers).status_code == 200
    raw = raw_entry(USER_KIND, account.id)
    assert raw is not None, "an authenticated request caches its user's state"
    data: dict[str, Any] = json.loads(raw)["d"]
    return data


@pytest.fixture
def bob(make_account: Callable[..., Account]) -> Account:
    return make_account()


def test_a_forged_owner_in_bobs_cached_entry_does_not_let_him_patch_alices_post(
    account: Account, bob: Account
) -> None:
    post = account.post_as("Alice's post", status="published")
    alice_owner = cached_user(account)["owner"]
    cached_user(bob)

    tamper(USER_KIND, bob.id, lambda d: d.update(owner=alice_owner))

    path = f"/api/posts/{post['id']}"
    patched = bob.client.patch(path, json={"title": "Bob was here"}, headers=bob.headers)
    assert patched.status_code == 403, patched.json
    assert account.client.get(path).json["data"]["title"] == "Alice's post"


def test_alices_entry_copied_under_bobs_key_is_refused(account: Account, bob: Account) -> None:
    post = account.post_as("Alice's post", status="published")
    cached_user(account)
    cached_user(bob)
    alices = raw_entry(USER_KIND, account.id)
    assert alices is not None

    write_raw(USER_KIND, bob.id, alices)  # a genuine entry, moved to another key

    path = f"/api/posts/{post['id']}"
    patched = bob.client.patch(path, json={"title": "Bob was here"}, headers=bob.headers)
    assert patched.status_code == 403, patched.json
    me = bob.client.get("/api/me", headers=bob.headers)
    assert me.status_code == 200
    assert me.json["data"]["id"] == bob.id


def test_a_forged_admin_flag_grants_nothing(
    app: Flask, client: FlaskClient, make_account: Callable[..., Account], bob: Account
) -> None:
    former_admin = make_account(admin=True)  # its token still carries the admin scope
    post = bob.post_as("Bob's post", status="published")
    with app.app_context():  # demoted: from now on the admin scope must count for nothing
        public_id = former_admin.id if ON_POSTGRES else uuid.UUID(former_admin.id).hex
        db.session.execute(
            sa.text("UPDATE users SET is_admin = :f, version = version + 1 WHERE public_id = :p"),
            {"f": False, "p": public_id},
        )
        db.session.commit()
        db.session.remove()
    delete_raw(USER_KIND, former_admin.id)  # drop the entry cached while still an admin
    assert cached_user(former_admin)["admin"] is False

    tamper(USER_KIND, former_admin.id, lambda d: d.update(admin=True))

    path = f"/api/posts/{post['id']}"
    patched = client.patch(path, json={"title": "Defaced"}, headers=former_admin.headers)
    assert patched.status_code == 403, patched.json
    assert client.get(path).json["data"]["title"] == "Bob's post"


def test_a_forged_status_does_not_leak_a_draft(client: FlaskClient, account: Account) -> None:
    draft = account.post_as("Secret draft", status="draft")
    path = f"/api/posts/{draft['id']}"
    assert client.get(path, headers=account.headers).status_code == 200  # cached by the author
    assert client.get(path).status_code == 404

    tamper(POST_KIND, draft["id"], lambda d: d.update(status="published"))

    leaked = client.get(path)
    assert leaked.status_code == 404, leaked.json
    listed = client.get(f"/api/users/{account.id}/posts")
    assert draft["id"] not in {p["id"] for p in listed.json["data"]}


def test_a_tampered_entry_is_a_security_event_and_a_miss(
    client: FlaskClient, account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    post = account.post_as("Published", status="published")
    path = f"/api/posts/{post['id']}"
    assert client.get(path).status_code == 200
    tamper(POST_KIND, post["id"], lambda d: d["public"].update(title="Forged"))

    with caplog.at_level(logging.WARNING, logger="app.security"):
        served = client.get(path)

    assert served.status_code == 200
    assert served.json["data"]["title"] == "Published"  # from the database
    events = [r for r in caplog.records if getattr(r, "security_event", None)]
    # One per read of the forged bytes (the pipeline's round trip, then the view's own read).
    assert events
    assert {getattr(r, "security_event", None) for r in events} == {"cache_entry_tampered"}
    assert client.get(path).json["data"]["title"] == "Published"  # refilled, genuine again
