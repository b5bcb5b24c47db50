"""The one request pipeline (app/core/pipeline.py): request id -> hygiene -> identify -> limit
and the caller's reads in one Redis round trip -> enforce -> validate -> handler -> finish."""

from __future__ import annotations

import gzip
import json
import logging
import socket
from typing import Any

import pytest
import redis
from flask import Flask

from app import create_app
from app.core import pipeline
from tests.support.assertions import assert_error
from tests.support.backends import REDIS_URL, needs_redis, test_config
from tests.support.limits import fresh_ip, get, limited_app


def production_like(app: Flask, **overrides: Any) -> Flask:
    """Limits and the cache on, as deployed."""
    config = {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_ANONYMOUS": "100/minute",
        "RATELIMIT_AUTHENTICATED": "100/minute",
        "CACHE_ENABLED": True,
        **overrides,
    }
    return create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **config))


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packed command list sent to Redis (one send = one round trip)."""
    sent: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


def test_one_before_and_one_finishing_hook(app: Flask) -> None:
    built = limited_app(app)
    assert built.before_request_funcs == {None: [pipeline.before]}
    assert built.after_request_funcs == {None: [pipeline.finish]}
    assert [f.__name__ for f in built.teardown_request_funcs[None]] == ["_clear"]
    assert not any(built.url_value_preprocessors.values())


def test_rate_limit_answers_before_validation(app: Flask, account) -> None:
    client = limited_app(app, RATELIMIT_AUTHENTICATED="2/minute").test_client()
    ip = fresh_ip()
    path = f"/api/users/{account.id}/posts"
    for _ in range(2):  # an invalid body: the validator answers while the limit has room
        response = client.post(
            path, json={"title": 5}, headers=account.headers, environ_base={"REMOTE_ADDR": ip}
        )
        assert_error(response, 400, "VALIDATION_ERROR")
    refused = client.post(
        path, json={"title": 5}, headers=account.headers, environ_base={"REMOTE_ADDR": ip}
    )
    assert_error(refused, 429, "RATE_LIMITED")


def test_auth_is_enforced_before_validation(client, account) -> None:
    response = client.post(f"/api/users/{account.id}/posts", json={"title": 5})
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_revoked_token_is_limited_per_user_before_it_is_refused(app: Flask, account) -> None:
    """Identify (signature only) keys the limit on the user; the refusal (blocklist) comes after
    it, so once the window is spent a revoked token gets 429, not another 401."""
    client = limited_app(app, RATELIMIT_AUTHENTICATED="3/minute").test_client()
    ip = fresh_ip()
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    # The logout spent one of the user's three; two more are refused with 401.
    statuses = [get(client, "/api/me", ip, **account.headers).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    refused = get(client, "/api/me", fresh_ip(), **account.headers)  # any address: per user
    assert_error(refused, 429, "RATE_LIMITED")


def test_one_access_line_and_one_metric_per_request(app: Flask, account, caplog) -> None:
    from app.core.metrics import HTTP_LATENCY, HTTP_REQUESTS

    client = production_like(app).test_client()
    route = "/api/users/<uuid:user_id>"
    path = f"/api/users/{account.id}"
    count = HTTP_REQUESTS.labels("GET", route, "200")._value.get()
    timed = sum(b.get() for b in HTTP_LATENCY.labels("GET", route, "200")._buckets)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = client.get(path, headers={**account.headers, "X-Request-ID": "pipe-42"})
        client.get("/api/posts")
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "pipe-42"
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert len(lines) == 2
    line = lines[0]
    assert line.getMessage() == "request"
    fields = ("request_id", "method", "path", "route", "status", "user_id")
    assert {k: getattr(line, k) for k in fields} == {
        "request_id": "pipe-42",  # the id the response carried; the events' id is beside it
        "method": "GET",
        "path": path,
        "route": route,
        "status": 200,
        "user_id": str(account.id),
    }
    assert line.server_request_id not in (None, "pipe-42")
    assert line.duration_ms >= 0
    assert lines[1].user_id is None
    assert HTTP_REQUESTS.labels("GET", route, "200")._value.get() == count + 1
    assert sum(b.get() for b in HTTP_LATENCY.labels("GET", route, "200")._buckets) == timed + 1


def test_a_refused_request_is_finished_like_any_other(app: Flask) -> None:
    """A 429 raised in `before` still gets the finishing steps: headers, request id, log."""
    client = limited_app(app, RATELIMIT_ANONYMOUS="1/minute").test_client()
    ip = fresh_ip()
    assert get(client, "/api/posts", ip).status_code == 200
    refused = get(client, "/api/posts", ip, **{"X-Request-ID": "over-1"})
    assert_error(refused, 429, "RATE_LIMITED")
    assert refused.headers["X-Request-ID"] == "over-1"
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_read_after_a_write_is_never_stale(app: Flask, account) -> None:
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    ip = fresh_ip()
    assert get(client, path, ip).status_code == 200  # cached now
    for n in range(3):
        changed = client.patch(path, json={"bio": f"edit {n}"}, headers=account.headers)
        assert changed.status_code == 200
        after = get(client, path, ip)
        assert after.json["data"]["bio"] == f"edit {n}"
        assert "email" not in after.json["data"]
        # The same version; the owner's copy (with the email) is the "-private" variant.
        assert after.headers["ETag"] == changed.headers["ETag"].replace("-private", "")
        mine = get(client, path, ip, **account.headers)
        assert mine.json["data"]["bio"] == f"edit {n}"
        assert mine.json["data"]["email"] == account.email
    deleted = client.delete(path, headers={**account.headers, "If-Match": after.headers["ETag"]})
    assert deleted.status_code == 204
    assert_error(get(client, path, ip), 404, "NOT_FOUND")
    # The deleted user's token is refused, on the warm path too.
    assert_error(get(client, "/api/me", ip, **account.headers), 401, "UNAUTHENTICATED")


def test_cached_and_fresh_answers_are_byte_identical(app: Flask, account) -> None:
    """A cold read (database) and a warm one (cache) give the same body and headers."""
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    bio = 'Ünïcødé "quoted" \\ back\u2028slash 🙂'
    assert client.patch(path, json={"bio": bio}, headers=account.headers).status_code == 200
    ip = fresh_ip()
    cold, warm = get(client, path, ip), get(client, path, ip)
    assert cold.get_data() == warm.get_data()
    varying = {"X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert [h for h in cold.headers if h[0] not in varying] == [
        h for h in warm.headers if h[0] not in varying
    ]
    assert json.loads(warm.get_data())["data"]["bio"] == bio


def test_a_compressed_body_keeps_the_etag(app: Flask, account) -> None:
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    assert client.patch(path, json={"bio": "é" * 600}, headers=account.headers).status_code == 200
    ip = fresh_ip()
    plain = get(client, path, ip)
    compressed = get(client, path, ip, **{"Accept-Encoding": "gzip"})
    refused = get(client, path, ip, **{"Accept-Encoding": "gzip;q=0, br;q=0"})
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(compressed.get_data()) == plain.get_data()
    assert compressed.headers["ETag"] == plain.headers["ETag"]
    assert "Content-Encoding" not in refused.headers
    remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in (plain, compressed, refused)]
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2], "one hit each"


def test_a_dead_redis_degrades_to_the_database(app: Flask, account) -> None:
    with socket.socket() as probe:  # a port nothing listens on: a Redis that is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = production_like(app, REDIS_URL=f"redis://127.0.0.1:{port}/0").test_client()
    for headers in ({}, account.headers):
        for _ in range(3):
            response = get(client, f"/api/users/{account.id}", fresh_ip(), **headers)
            assert response.status_code == 200
            assert response.json["data"]["id"] == account.id
            assert "X-RateLimit-Remaining" in response.headers  # counted in process memory
    # Revocation still holds: the blocklist's table answers.
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    assert_error(get(client, "/api/me", fresh_ip(), **account.headers), 401, "UNAUTHENTICATED")


@needs_redis
def test_a_warm_read_is_one_round_trip_authenticated_or_not(
    app: Flask, account, make_account, round_trips: list[bytes]
) -> None:
    """Limit hit + window, revocation, the caller's state and the cached entry: one round trip,
    so authentication costs no further one."""
    reader = make_account()
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    ip = fresh_ip()
    for headers in ({}, reader.headers, {}, reader.headers):  # warm: scripts, cache entries
        assert get(client, path, ip, **headers).status_code == 200
    for headers in ({}, reader.headers):
        round_trips.clear()
        assert get(client, path, ip, **headers).status_code == 200
        assert len(round_trips) == 1, [c[:1] for c in round_trips]
        sent = b"".join(round_trips[0])  # one send: the whole pipeline
        assert b"EVALSHA" in sent
        assert b"GET" in sent
        assert (b"EXISTS" in sent) == bool(headers)


@needs_redis
def test_a_cached_read_skips_the_view_and_answers_what_it_would(
    app: Flask, account, make_account, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.users.service import UserService

    calls: list[object] = []
    original = UserService.read

    def counting(self: Any, public_id: Any) -> Any:
        if str(public_id) == account.id:  # the view's read (not a caller's own state)
            calls.append(public_id)
        return original(self, public_id)

    monkeypatch.setattr(UserService, "read", counting)
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    ip = fresh_ip()
    cold = get(client, path, ip)  # a miss: the view reads (and fills the cache)
    assert len(calls) == 1
    warm = get(client, path, ip)
    other = get(client, path, ip, **make_account().headers)
    assert len(calls) == 1, "served from the entry, without the view"
    assert cold.get_data() == warm.get_data() == other.get_data()
    assert warm.headers["ETag"] == cold.headers["ETag"]
    assert warm.headers["Vary"] == cold.headers["Vary"]
    unchanged = get(client, path, ip, **{"If-None-Match": warm.headers["ETag"]})
    assert unchanged.status_code == 304
    assert unchanged.get_data() == b""
    mine = get(client, path, ip, **account.headers)  # the owner sees the email: the view
    assert mine.json["data"]["email"] == account.email
    assert len(calls) == 2
    forged = account.headers["Authorization"][:-4] + "AAAA"
    assert_error(get(client, path, ip, Authorization=forged), 401, "UNAUTHENTICATED")


@needs_redis
def test_a_published_post_is_served_from_the_cache_and_a_draft_is_not(app: Flask, account) -> None:
    client = production_like(app).test_client()
    published = account.post_as("Out there", status="published")
    draft = account.post_as("Not yet", status="draft")
    ip = fresh_ip()
    for post in (published, draft):  # the author's reads fill the cache with both
        assert client.get(f"/api/posts/{post['id']}", headers=account.headers).status_code == 200
    cold = get(client, f"/api/posts/{published['id']}", ip)
    warm = get(client, f"/api/posts/{published['id']}", ip)
    assert cold.status_code == warm.status_code == 200
    assert cold.get_data() == warm.get_data()
    assert_error(get(client, f"/api/posts/{draft['id']}", ip), 404, "NOT_FOUND")
    assert get(client, f"/api/posts/{draft['id']}", ip, **account.headers).status_code == 200


@needs_redis
def test_a_flushed_script_is_loaded_again_and_counted_once(app: Flask, account) -> None:
    client = production_like(app).test_client()
    path = f"/api/users/{account.id}"
    ip = fresh_ip()
    first = int(get(client, path, ip).headers["X-RateLimit-Remaining"])
    admin = redis.Redis.from_url(str(REDIS_URL))
    try:
        admin.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    finally:
        admin.close()
    after = get(client, path, ip)
    assert after.status_code == 200
    assert int(after.headers["X-RateLimit-Remaining"]) == first - 1


def test_the_auth_blueprint_declares_its_responses_sensitive(app: Flask, account) -> None:
    from app.core.http_security import SENSITIVE

    built = production_like(app)
    assert built.extensions[SENSITIVE] == {"auth", "oauth", "oauth_server"}  # tokens, secrets
    client = built.test_client()
    body = {"email": account.email, "password": "correct horse battery"}
    response = client.post("/api/auth/login", json=body, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "Content-Encoding" not in response.headers


def test_core_names_no_domain_endpoint_or_path() -> None:
    from pathlib import Path

    core = Path(pipeline.__file__).parent
    for name in ("limiting.py", "http_security.py", "pipeline.py"):
        text = (core / name).read_text()
        for domain in ("auth.Login", "users.UserCollection", "/api/auth/", "app.users", "app.auth"):
            assert domain not in text, (name, domain)
