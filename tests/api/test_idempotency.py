"""Idempotency-Key on the create routes (contract §5): a retry with the same key and body gets
the first response back and creates nothing; the same key with another body is 422; keys are
per caller; failures do not use a key up; concurrent duplicates create exactly one resource."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app import create_app
from app.core.db import utcnow
from app.core.idempotency import (
    HEADER,
    REPLAYED_HEADER,
    TABLE,
    IdempotencyStore,
    request_fingerprint,
)
from app.extensions import db
from tests.factories import PASSWORD, bearer, login, register, unique
from tests.support.assertions import assert_error
from tests.support.backends import test_config

REPLAYED = ("Content-Type", "Location", "ETag", "Cache-Control")


def user_body(**fields: Any) -> dict[str, Any]:
    name = fields.pop("username", None) or unique()
    return {"email": f"{name}@example.com", "username": name, "password": PASSWORD, **fields}


def key() -> str:
    return f"key-{uuid.uuid4()}"


def keyed(idempotency_key: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), HEADER: idempotency_key}


def assert_replay_of(first: Any, again: Any) -> None:
    """`again` is `first` replayed: same status, body bytes and headers, marked as a replay."""
    assert first.status_code == 201, first.get_json()
    assert again.status_code == first.status_code, again.get_json()
    assert again.get_data() == first.get_data()
    for name in REPLAYED:
        assert again.headers.get(name) == first.headers.get(name), name
    assert first.headers["Location"]
    assert first.headers["ETag"]
    assert REPLAYED_HEADER not in first.headers
    assert again.headers[REPLAYED_HEADER] == "true"


def key_rows(app: Any) -> list[dict[str, Any]]:
    with app.app_context():
        rows = db.session.execute(sa.select(TABLE)).mappings().all()
        db.session.remove()
        return [dict(row) for row in rows]


# Replays --------------------------------------------------------------------------------------


def test_registration_replay_returns_the_first_response_and_creates_nothing(client, row_counts):
    body, k = user_body(display_name="Ada"), key()
    first = client.post("/api/users", json=body, headers=keyed(k))
    after_first = row_counts()

    # The same JSON with its keys in another order and other whitespace: the same request.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = client.post(
        "/api/users", data=reordered, content_type="application/json", headers=keyed(k)
    )

    assert_replay_of(first, again)
    assert row_counts() == after_first  # no user, no event
    assert client.get(first.headers["Location"]).status_code == 200


def test_post_replay_returns_the_first_response_and_creates_nothing(client, account, row_counts):
    k, body = key(), {"title": "Once", "body": "only once", "status": "published"}
    path = f"/api/users/{account.id}/posts"
    first = client.post(path, json=body, headers=keyed(k, account.headers))
    after_first = row_counts()
    again = client.post(path, json=body, headers=keyed(k, account.headers))

    assert_replay_of(first, again)
    assert row_counts() == after_first
    assert after_first["posts"] == 1


def test_the_key_belongs_to_the_user_not_to_the_token(client, account, row_counts):
    """A new login of the same user is the same caller."""
    k, body = key(), {"title": "Retried after re-login"}
    path = f"/api/users/{account.id}/posts"
    first = client.post(path, json=body, headers=keyed(k, account.headers))
    fresh = bearer(login(client, account.email)["access_token"])
    counts = row_counts()
    again = client.post(path, json=body, headers=keyed(k, fresh))
    assert_replay_of(first, again)
    assert row_counts() == counts


def test_requests_without_a_key_are_not_deduplicated(client, account, row_counts):
    path = f"/api/users/{account.id}/posts"
    for _ in range(2):
        response = client.post(path, json={"title": "Twice"}, headers=account.headers)
        assert response.status_code == 201
        assert REPLAYED_HEADER not in response.headers
    assert row_counts()["posts"] == 2
    assert row_counts()["idempotency_keys"] == 0


# Same key, another request --------------------------------------------------------------------


def test_same_key_with_another_body_is_422_and_creates_nothing(client, row_counts):
    k = key()
    assert client.post("/api/users", json=user_body(), headers=keyed(k)).status_code == 201
    counts = row_counts()

    response = client.post("/api/users", json=user_body(), headers=keyed(k))

    error = assert_error(response, 422, "UNPROCESSABLE")
    assert [d["field"] for d in error["details"]] == [HEADER]
    assert row_counts() == counts


def test_same_key_on_another_path_is_422(client, account, make_account, row_counts):
    """Method and path are part of the request: a key used for one create is not another's."""
    other = make_account(admin=True)
    k, body = key(), {"title": "Same body"}
    mine = client.post(f"/api/users/{other.id}/posts", json=body, headers=keyed(k, other.headers))
    assert mine.status_code == 201
    counts = row_counts()
    elsewhere = client.post(
        f"/api/users/{account.id}/posts", json=body, headers=keyed(k, other.headers)
    )
    assert_error(elsewhere, 422, "UNPROCESSABLE")
    assert row_counts() == counts


# Scope ----------------------------------------------------------------------------------------


def test_keys_are_per_user(client, make_account, row_counts):
    alice, bob = make_account(), make_account()
    k, body = key(), {"title": "Same key, same body"}
    created = [
        client.post(f"/api/users/{who.id}/posts", json=body, headers=keyed(k, who.headers))
        for who in (alice, bob)
    ]
    assert [r.status_code for r in created] == [201, 201]
    assert all(REPLAYED_HEADER not in r.headers for r in created)
    assert created[0].get_json()["data"]["author_id"] == alice.id
    assert created[1].get_json()["data"]["author_id"] == bob.id
    assert row_counts()["posts"] == 2
    assert {row["scope"] for row in key_rows(client.application)} == {
        f"user:{alice.id}",
        f"user:{bob.id}",
    }


def test_anonymous_keys_are_per_client_ip(client, row_counts):
    k = key()
    here, there = {"REMOTE_ADDR": "192.0.2.10"}, {"REMOTE_ADDR": "198.51.100.20"}
    first = client.post("/api/users", json=user_body(), headers=keyed(k), environ_base=here)
    # Another address, another body, the same key: a caller of its own, so no 422.
    other = client.post("/api/users", json=user_body(), headers=keyed(k), environ_base=there)
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.get_json()["data"]["id"] != other.get_json()["data"]["id"]
    # From the first address again with another body: that caller's key is taken.
    reused = client.post("/api/users", json=user_body(), headers=keyed(k), environ_base=here)
    assert_error(reused, 422, "UNPROCESSABLE")
    assert row_counts()["users"] == 2


def test_a_logged_out_token_never_gets_the_replay(client, account, row_counts):
    k, body = key(), {"title": "Before logout"}
    path = f"/api/users/{account.id}/posts"
    assert client.post(path, json=body, headers=keyed(k, account.headers)).status_code == 201
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    counts = row_counts()

    again = client.post(path, json=body, headers=keyed(k, account.headers))

    assert_error(again, 401, "UNAUTHENTICATED")
    assert REPLAYED_HEADER not in again.headers
    assert row_counts() == counts


# Failures do not use a key up -----------------------------------------------------------------


def test_a_400_does_not_use_up_the_key(client, row_counts):
    k, body = key(), user_body()
    invalid = client.post("/api/users", json={**body, "email": "not-an-email"}, headers=keyed(k))
    assert_error(invalid, 400, "VALIDATION_ERROR")
    assert row_counts()["idempotency_keys"] == 0

    fixed = client.post("/api/users", json=body, headers=keyed(k))  # another body: no 422
    assert fixed.status_code == 201
    assert REPLAYED_HEADER not in fixed.headers
    assert row_counts()["users"] == 1


def test_a_409_is_not_replayed_and_does_not_use_up_the_key(client, row_counts):
    taken = register(client)
    k = key()
    clash = user_body(email=taken["email"])
    for _ in range(2):  # the failure runs again (and fails again), it is not replayed
        response = client.post("/api/users", json=clash, headers=keyed(k))
        assert_error(response, 409, "CONFLICT")
        assert REPLAYED_HEADER not in response.headers
    assert row_counts()["idempotency_keys"] == 0

    created = client.post("/api/users", json=user_body(), headers=keyed(k))
    assert created.status_code == 201
    assert row_counts()["users"] == 2


def test_a_415_and_invalid_json_do_not_use_up_the_key(client):
    k = key()
    plain = client.post("/api/users", data="x", content_type="text/plain", headers=keyed(k))
    assert_error(plain, 415, "UNSUPPORTED_MEDIA_TYPE")
    broken = client.post(
        "/api/users", data="{not json", content_type="application/json", headers=keyed(k)
    )
    assert_error(broken, 400, "VALIDATION_ERROR")
    assert client.post("/api/users", json=user_body(), headers=keyed(k)).status_code == 201


def test_a_failed_authentication_does_not_use_up_the_key(client, account, row_counts):
    k, body = key(), {"title": "t"}
    path = f"/api/users/{account.id}/posts"
    assert_error(client.post(path, json=body, headers=keyed(k)), 401, "UNAUTHENTICATED")
    assert client.post(path, json=body, headers=keyed(k, account.headers)).status_code == 201


# Concurrency ----------------------------------------------------------------------------------


def post_together(app: Any, requests: list[dict[str, Any]]) -> list[tuple[int, Any, Any]]:
    """Send every request at once, each from its own thread and test client."""
    barrier = threading.Barrier(len(requests))

    def attempt(kwargs: dict[str, Any]) -> tuple[int, Any, Any]:
        client = app.test_client()
        barrier.wait(timeout=10)
        response = client.post(**kwargs)
        return response.status_code, response.get_json(), response

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(attempt, requests))


def assert_one_created(results: list[tuple[int, Any, Any]]) -> None:
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {201, 409}, statuses
    originals = [r for s, _, r in results if s == 201 and REPLAYED_HEADER not in r.headers]
    assert len(originals) == 1, statuses
    for status, body, response in results:
        if status == 201:
            assert response.get_data() == originals[0].get_data()
        else:  # the key is held by the request that is creating it
            assert body["error"]["code"] == "CONFLICT"
            assert "in progress" in body["error"]["message"]
            assert [d["field"] for d in body["error"]["details"]] == [HEADER]


def test_concurrent_duplicate_registrations_create_one_user(app, row_counts):
    for _ in range(3):
        k, body = key(), user_body()
        before = row_counts()
        results = post_together(
            app, [{"path": "/api/users", "json": body, "headers": keyed(k)} for _ in range(6)]
        )
        assert_one_created(results)
        after = row_counts()
        assert after["users"] == before["users"] + 1
        assert after["events"] == before["events"] + 1


def test_concurrent_duplicate_posts_create_one_post(app, account, row_counts):
    for _ in range(3):
        k, body = key(), {"title": "Concurrent", "status": "published"}
        request = {
            "path": f"/api/users/{account.id}/posts",
            "json": body,
            "headers": keyed(k, account.headers),
        }
        before = row_counts()["posts"]
        assert_one_created(post_together(app, [dict(request) for _ in range(6)]))
        assert row_counts()["posts"] == before + 1


def test_a_key_held_by_a_running_request_is_409(app, client, row_counts):
    """While the first request runs (its claim is in progress) a retry is refused, not run."""
    body, k = user_body(), key()
    with app.test_request_context("/api/users", method="POST", json=body):
        fingerprint = request_fingerprint()
    keys = IdempotencyStore(_engine(app), ttl_seconds=60, lock_seconds=60)
    keys.claim("ip:127.0.0.1", k, fingerprint)

    response = client.post("/api/users", json=body, headers=keyed(k))

    assert_error(response, 409, "CONFLICT")
    assert row_counts()["users"] == 0
    # Another body under that key is still 422, in progress or not.
    assert_error(
        client.post("/api/users", json=user_body(), headers=keyed(k)), 422, "UNPROCESSABLE"
    )


def _engine(app: Any) -> sa.Engine:
    with app.app_context():
        return db.engine


def test_an_abandoned_claim_is_taken_over_once_its_lock_expires(app, client, row_counts):
    """A process killed mid-request leaves its claim in progress; after the lock, a retry runs."""
    body, k = user_body(), key()
    with app.test_request_context("/api/users", method="POST", json=body):
        fingerprint = request_fingerprint()
    now = utcnow()
    with _engine(app).begin() as conn:
        conn.execute(
            sa.insert(TABLE).values(
                scope="ip:127.0.0.1",
                key=k,
                fingerprint=fingerprint,
                state="in_progress",
                created_at=now - timedelta(minutes=5),
                expires_at=now - timedelta(minutes=4),
            )
        )
    response = client.post("/api/users", json=body, headers=keyed(k))
    assert response.status_code == 201
    assert REPLAYED_HEADER not in response.headers
    assert client.post("/api/users", json=body, headers=keyed(k)).headers[REPLAYED_HEADER]
    assert row_counts()["users"] == 1


# Expiry and the purge -------------------------------------------------------------------------


def test_an_expired_key_can_be_used_again(app, database_uri, row_counts):
    short = create_app(test_config(database_uri, IDEMPOTENCY_TTL_SECONDS=1))
    client, k = short.test_client(), key()
    first = client.post("/api/users", json=user_body(), headers=keyed(k))
    assert first.status_code == 201
    (row,) = key_rows(short)
    assert row["expires_at"] - row["created_at"] < timedelta(seconds=2)

    time.sleep(1.2)
    reused = client.post("/api/users", json=user_body(), headers=keyed(k))  # no 422 any more

    assert reused.status_code == 201
    assert REPLAYED_HEADER not in reused.headers
    assert reused.get_json()["data"]["id"] != first.get_json()["data"]["id"]
    assert row_counts()["users"] == 2
    assert len(key_rows(short)) == 1  # overwritten, not added
    with short.app_context():
        db.engine.dispose()


def test_completed_keys_are_kept_for_the_configured_ttl(app, client):
    client.post("/api/users", json=user_body(), headers=keyed(key()))
    (row,) = key_rows(app)
    assert row["state"] == "completed"
    lifetime = row["expires_at"] - row["created_at"]
    ttl = app.config["IDEMPOTENCY_TTL_SECONDS"]
    assert ttl == 86400
    assert timedelta(seconds=ttl) <= lifetime < timedelta(seconds=ttl + 10)


def test_the_purge_task_removes_expired_keys_only(app, client):
    live = key()
    assert client.post("/api/users", json=user_body(), headers=keyed(live)).status_code == 201
    now = utcnow()
    with _engine(app).begin() as conn:
        for n in range(3):
            conn.execute(
                sa.insert(TABLE).values(
                    scope="ip:192.0.2.1",
                    key=f"old-{n}",
                    fingerprint="0" * 64,
                    state="completed" if n else "in_progress",
                    response_status=201,
                    response_headers={},
                    response_body=b"{}",
                    created_at=now - timedelta(days=2),
                    expires_at=now - timedelta(days=1),
                )
            )
    from worker.tasks.maintenance import purge_expired_idempotency_keys

    with app.app_context():
        assert purge_expired_idempotency_keys.run() == 3
        assert purge_expired_idempotency_keys.run() == 0
    assert [row["key"] for row in key_rows(app)] == [live]


def test_beat_purges_keys_on_the_configured_interval(database_uri):
    from worker import make_celery

    celery = make_celery(create_app(test_config(database_uri, IDEMPOTENCY_PURGE_SECONDS=123)))
    entry = celery.conf.beat_schedule["purge-idempotency-keys"]
    assert entry == {"task": "idempotency.purge_expired_keys", "schedule": 123.0}


# The key itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "k" * 256, "caf\u00e9", "tab\there", "del\x7f", " "],
    ids=["empty", "too-long", "non-ascii", "tab", "control", "blank"],
)
def test_an_invalid_key_is_400(client, row_counts, bad):
    response = client.post("/api/users", json=user_body(), headers={HEADER: bad})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [d["field"] for d in error["details"]] == [HEADER]
    assert row_counts()["users"] == 0


@pytest.mark.parametrize("good", ["k" * 255, "a", "with inner spaces", "~!#$%&'*+-.^_`|"])
def test_any_printable_ascii_key_up_to_255_characters_works(client, good):
    first = client.post("/api/users", json=user_body(), headers={HEADER: good})
    assert first.status_code == 201
    assert [row["key"] for row in key_rows(client.application)] == [good]


def test_login_ignores_the_key(client):
    """Login answers with fresh secrets: never stored, never replayed."""
    user = register(client)
    k, body = key(), {"email": user["email"], "password": PASSWORD}
    tokens = [client.post("/api/auth/login", json=body, headers=keyed(k)) for _ in range(2)]
    assert [r.status_code for r in tokens] == [200, 200]
    assert all(REPLAYED_HEADER not in r.headers for r in tokens)
    first, second = (r.get_json()["data"] for r in tokens)
    assert first["refresh_token"] != second["refresh_token"]
    assert key_rows(client.application) == []


def test_the_header_is_documented_on_the_create_operations_only(client):
    spec = client.get("/api/openapi.json").get_json()
    for path in ("/api/users", "/api/users/{user_id}/posts"):
        operation = spec["paths"][path]["post"]
        (parameter,) = [p for p in operation["parameters"] if p["name"] == HEADER]
        assert parameter["in"] == "header"
        assert parameter["required"] is False
        assert parameter["schema"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[!-~]([ -~]{0,253}[!-~])?$",
        }
        assert {"400", "409", "422"} <= set(operation["responses"])
        assert REPLAYED_HEADER in operation["responses"]["201"]["headers"]
        assert "Location" in operation["responses"]["201"]["headers"]
    for path in ("/api/auth/login", "/api/auth/refresh", "/api/auth/logout"):
        names = [p["name"] for p in spec["paths"][path]["post"].get("parameters", [])]
        assert HEADER not in names
