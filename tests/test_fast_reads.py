"""The fast lane for anonymous cached reads (app/core/fast_reads.py).

It answers `GET /api/users/{id}` from the cache in one Redis round trip, outside Flask, so these
tests hold it to the full path: the same status, bytes and headers; the same rate-limit budget
(one hit per request, whichever path answers); the same log line and metrics; every request it
must not answer handed to Flask untouched; and a read after a write never stale.

Each test compares two apps on the same database and Redis: `fast` (the lane on) and `full`
(FAST_READS_ENABLED=false). A before_request hook on each tells whether Flask ran. Needs Redis:
the lane only exists where the limiter and the cache share one.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from typing import Any

import pytest
import redis
from flask import Flask, request
from flask.testing import FlaskClient

from app import create_app
from app.core.fast_reads import _charged, _window
from tests.conftest import REDIS_URL, assert_error, needs_redis, test_config
from tests.support.limits import fresh_ip

pytestmark = needs_redis

# Differ per request by design (an id, the window's remaining count and reset time).
PER_REQUEST = {"X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset"}


def build(app: Flask, **overrides: Any) -> tuple[Flask, list[str]]:
    """An app like production's (limits and cache on) and the paths Flask itself handled."""
    config = {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_ANONYMOUS": "100/minute",
        "CACHE_ENABLED": True,
        **overrides,
    }
    built = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **config))
    seen: list[str] = []
    built.before_request_funcs.setdefault(None, []).insert(0, lambda: seen.append(request.path))
    return built, seen


@pytest.fixture
def fast(app: Flask) -> tuple[Flask, list[str]]:
    return build(app)


@pytest.fixture
def full(app: Flask) -> tuple[Flask, list[str]]:
    return build(app, FAST_READS_ENABLED=False)


def get(client: FlaskClient, path: str, ip: str, **headers: str) -> Any:
    return client.get(path, environ_base={"REMOTE_ADDR": ip}, headers=headers)


def warm(client: FlaskClient, user_id: str, ip: str) -> None:
    """One read through Flask fills the cache (the lane then has an entry to serve)."""
    assert get(client, f"/api/users/{user_id}", ip).status_code == 200


def warmed(lane: tuple[Flask, list[str]], user_id: str) -> tuple[FlaskClient, str]:
    """A client of `lane`'s app and a fresh address, the user cached by one read through Flask
    and the spy emptied: the next anonymous read of the user is the lane's to answer."""
    built, seen = lane
    client, ip = built.test_client(), fresh_ip()
    warm(client, user_id, ip)
    seen.clear()
    return client, ip


def stable(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k not in PER_REQUEST]


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


def test_a_cached_read_is_byte_for_byte_the_full_paths_answer(fast, full, account) -> None:
    fast_app, fast_seen = fast
    full_app, full_seen = full
    ip = fresh_ip()
    path = f"/api/users/{account.id}"
    warm(full_app.test_client(), account.id, fresh_ip())
    full_seen.clear()

    served = get(fast_app.test_client(), path, ip)
    answered = get(full_app.test_client(), path, ip)

    assert fast_seen == [], "the fast lane answered without Flask"
    assert full_seen == [path]
    assert served.status_code == answered.status_code == 200
    assert served.get_data() == answered.get_data()
    assert stable(served.headers) == stable(answered.headers)
    assert served.json["data"]["id"] == account.id
    assert "email" not in served.json["data"]
    # One budget: the two requests, whichever path answered, are two hits of one window.
    assert int(served.headers["X-RateLimit-Remaining"]) == 99
    assert int(answered.headers["X-RateLimit-Remaining"]) == 98
    assert (
        abs(int(served.headers["X-RateLimit-Reset"]) - int(answered.headers["X-RateLimit-Reset"]))
        <= 1
    )
    assert len(served.headers["X-Request-ID"]) == 32


def test_same_headers_with_cors_and_production_settings(app, account) -> None:
    settings = {"CORS_ORIGINS": "https://app.example.com", "HSTS_SECONDS": 600}
    fast_app, fast_seen = build(app, **settings)
    full_app, _ = build(app, FAST_READS_ENABLED=False, **settings)
    warm(full_app.test_client(), account.id, fresh_ip())
    ip = fresh_ip()
    served = get(fast_app.test_client(), f"/api/users/{account.id}", ip)
    answered = get(full_app.test_client(), f"/api/users/{account.id}", ip)
    assert fast_seen == []
    assert "Origin" in served.headers["Vary"]
    assert stable(served.headers) == stable(answered.headers)


def test_one_round_trip_for_the_limit_and_the_entry(fast, account, round_trips) -> None:
    _, fast_seen = fast
    client, ip = warmed(fast, account.id)  # through Flask (a miss), loading limits' scripts too
    round_trips.clear()
    for _ in range(3):
        assert get(client, f"/api/users/{account.id}", ip).status_code == 200
    assert fast_seen == []
    assert len(round_trips) == 3, [c[:80] for c in round_trips]


def test_a_miss_is_handed_to_flask_charged_once(fast, account, round_trips) -> None:
    fast_app, fast_seen = fast
    client = fast_app.test_client()
    ip = fresh_ip()
    first = get(client, f"/api/users/{account.id}", ip)  # nothing cached yet
    second = get(client, f"/api/users/{account.id}", ip)
    assert first.status_code == second.status_code == 200
    assert fast_seen == [f"/api/users/{account.id}"], "the miss went to Flask, the hit did not"
    assert first.headers["X-RateLimit-Remaining"] == "99"
    assert second.headers["X-RateLimit-Remaining"] == "98"
    assert first.get_data() == second.get_data()


def test_requests_it_must_not_answer_go_to_flask(fast, account) -> None:
    _, seen = fast
    client, ip = warmed(fast, account.id)
    path = f"/api/users/{account.id}"
    etag = get(client, path, ip).headers["ETag"]
    cases = [
        ("GET", path, {"Authorization": f"Bearer {account.tokens['access_token']}"}, 200),
        ("GET", path + "?x=1", {}, 200),
        ("GET", path, {"If-None-Match": etag}, 304),
        ("GET", path, {"If-Match": etag}, 200),
        ("GET", path, {"Origin": "https://elsewhere.example"}, 200),
        ("GET", path.upper().replace("/API/USERS/", "/api/users/"), {}, 200),
        ("GET", path + "/", {}, 404),
        ("HEAD", path, {}, 200),
        ("DELETE", path, {}, 401),
    ]
    for method, target, headers, status in cases:
        response = client.open(
            target, method=method, headers=headers, environ_base={"REMOTE_ADDR": ip}
        )
        assert response.status_code == status, (method, target, headers, response.status_code)
    assert len(seen) == len(cases), seen
    # The authenticated read got the owner's view, with the email: Flask answered it.
    owner = get(client, path, ip, Authorization=f"Bearer {account.tokens['access_token']}")
    assert owner.json["data"]["email"] == account.email


def test_the_limit_is_enforced_with_flasks_429(app, account) -> None:
    lane = build(app, RATELIMIT_ANONYMOUS="3/minute")
    seen = lane[1]
    client, ip = warmed(lane, account.id)  # hit 1, through Flask
    for remaining in ("1", "0"):
        response = get(client, f"/api/users/{account.id}", ip)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == remaining
    assert seen == []
    refused = get(client, f"/api/users/{account.id}", ip)
    assert_error(refused, 429, "RATE_LIMITED")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert seen == [f"/api/users/{account.id}"], "the refusal came from Flask's limiter"
    # Another address has its own window, still served by the lane.
    assert get(client, f"/api/users/{account.id}", fresh_ip()).status_code == 200
    assert len(seen) == 1


def test_a_read_after_a_write_is_never_stale(fast, account) -> None:
    _, seen = fast
    client, ip = warmed(fast, account.id)
    path = f"/api/users/{account.id}"
    for n in range(3):
        changed = client.patch(path, json={"bio": f"edit {n}"}, headers=account.headers)
        assert changed.status_code == 200
        after = get(client, path, ip)
        assert after.json["data"]["bio"] == f"edit {n}"
        # The same version; the owner's copy (with the email) is the "-private" variant.
        assert after.headers["ETag"] == changed.headers["ETag"].replace("-private", "")
    assert seen.count(path) >= 3  # the writes (and the misses they cause) go through Flask
    deleted = client.delete(path, headers={**account.headers, "If-Match": after.headers["ETag"]})
    assert deleted.status_code == 204
    assert_error(get(client, path, ip), 404, "NOT_FOUND")


def test_a_body_to_compress_goes_to_flask(fast, account) -> None:
    fast_app, seen = fast
    client = fast_app.test_client()
    ip = fresh_ip()
    path = f"/api/users/{account.id}"
    assert client.patch(path, json={"bio": "é" * 600}, headers=account.headers).status_code == 200
    warm(client, account.id, ip)
    plain = get(client, path, ip)  # no Accept-Encoding: the lane may answer
    seen.clear()
    compressed = get(client, path, ip, **{"Accept-Encoding": "gzip"})
    assert seen == [path]
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(compressed.get_data()) == plain.get_data()
    remaining = [int(r.headers["X-RateLimit-Remaining"]) for r in (plain, compressed)]
    assert remaining[0] - remaining[1] == 1, "handed over without a second hit"


def test_the_client_address_comes_from_proxyfix(app, account) -> None:
    fast_app, seen = build(app, TRUSTED_PROXY_COUNT=1)
    client = fast_app.test_client()
    path = f"/api/users/{account.id}"
    warm(client, account.id, "127.0.0.1")
    seen.clear()
    forwarded = fresh_ip()
    remaining = [
        get(client, path, "127.0.0.1", **{"X-Forwarded-For": forwarded}).headers[
            "X-RateLimit-Remaining"
        ]
        for _ in range(2)
    ]
    assert remaining == ["99", "98"], "the forwarded address has its own window"
    assert seen == []


def test_the_log_line_and_metrics_match_the_full_path(fast, account, caplog) -> None:
    from app.core.metrics import HTTP_REQUESTS

    _, seen = fast
    client, ip = warmed(fast, account.id)
    route = "/api/users/<uuid:user_id>"
    before = HTTP_REQUESTS.labels("GET", route, "200")._value.get()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = get(client, f"/api/users/{account.id}", ip, **{"X-Request-ID": "lane-42"})
    assert seen == []
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "lane-42"
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line.getMessage() == "request"
    fields = {k: getattr(line, k) for k in ("request_id", "method", "path", "route", "status")}
    assert fields == {
        "request_id": "lane-42",
        "method": "GET",
        "path": f"/api/users/{account.id}",
        "route": route,
        "status": 200,
    }
    assert line.user_id is None
    assert line.duration_ms >= 0
    assert HTTP_REQUESTS.labels("GET", route, "200")._value.get() == before + 1


def test_a_dead_redis_sends_reads_to_flask_which_degrades(app, account, tmp_path) -> None:
    """With Redis gone the lane steps aside (and trips the cache's breaker); Flask answers from
    the database, as it does for any read while the cache is down."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on: a Redis that is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = f"redis://127.0.0.1:{port}/0"
    fast_app, seen = build(app, REDIS_URL=dead)
    client = fast_app.test_client()
    for _ in range(5):
        response = get(client, f"/api/users/{account.id}", fresh_ip())
        assert response.status_code == 200
        assert response.json["data"]["id"] == account.id
    assert len(seen) == 5


def test_window_arithmetic_matches_limits(fast, account) -> None:
    """`_charged` reads the window as limits' own strategy does (remaining exactly, reset to the
    second), on a real window with hits in its previous and current halves."""
    from limits import parse

    fast_app, _ = fast
    limiter = fast_app.extensions["limiter"]
    item = parse("100/minute")
    key = ["postboard", f"ip:{fresh_ip()}", "api"]
    for _ in range(7):
        assert limiter.limiter.hit(item, *key)
    storage = limiter.storage
    client = redis.Redis.from_url(REDIS_URL)
    current = storage.prefixed_key("{" + item.key_for(*key) + "}")
    previous = storage.prefixed_key("{" + item.key_for(*key) + "}/-1")
    # Move the hits into the previous window (as time would) and take 3 in the current one.
    client.rename(current, previous)
    client.pexpire(previous, 25_000)
    for _ in range(3):
        assert limiter.limiter.hit(item, *key)
    # A moment later, as flask-limiter reads it (after the view): in the very millisecond of
    # a hit a fresh window's TTL is a whole number of periods, where limits' modulo says 0 s
    # and the lane says a whole period (see _charged).
    time.sleep(0.02)
    reply = storage.lua_sliding_window([previous, current], [60])
    ours = _charged(100, 60, _window(reply))
    stats = limiter.limiter.get_window_stats(item, *key)
    assert ours.remaining == stats.remaining
    assert abs(ours.reset_at - int(stats.reset_time + 1)) <= 1
    client.close()


def test_any_single_anonymous_limit_is_served(app, account) -> None:
    lane = build(app, RATELIMIT_ANONYMOUS="50 per 30 seconds")
    seen = lane[1]
    client, ip = warmed(lane, account.id)
    served = get(client, f"/api/users/{account.id}", ip)
    assert seen == []
    assert served.headers["X-RateLimit-Limit"] == "50"
    assert served.headers["X-RateLimit-Remaining"] == "48"
    assert 0 < int(served.headers["X-RateLimit-Reset"]) - time.time() <= 31


def test_disabled_or_without_the_counter_strategy_flask_answers(app, account) -> None:
    for settings in (
        {"FAST_READS_ENABLED": False},
        {"RATELIMIT_STRATEGY": "moving-window"},
        {"RATELIMIT_ANONYMOUS": "10/second;300/minute"},  # several limits: flask-limiter's
    ):
        lane = build(app, **settings)
        client, ip = warmed(lane, account.id)
        assert get(client, f"/api/users/{account.id}", ip).status_code == 200
        assert lane[1] == [f"/api/users/{account.id}"], settings


def test_the_body_is_what_the_response_schema_would_render(fast, account) -> None:
    """A cached user is served as the schema renders a fresh one (unicode and all)."""
    fast_app, seen = fast
    client = fast_app.test_client()
    path = f"/api/users/{account.id}"
    bio = 'Ünïcødé "quoted" \\ back\u2028slash 🙂'
    fresh = client.patch(path, json={"bio": bio}, headers=account.headers)
    ip = fresh_ip()
    warm(client, account.id, ip)
    seen.clear()
    served = get(client, path, ip)
    assert seen == []
    expected = {k: v for k, v in fresh.json["data"].items() if k != "email"}
    assert json.loads(served.get_data()) == {"data": expected}


def test_the_lane_recovers_from_flushed_scripts_and_a_killed_connection(fast, account) -> None:
    fast_app, seen = fast
    client, ip = warmed(fast, account.id)
    path = f"/api/users/{account.id}"
    admin = redis.Redis.from_url(REDIS_URL)

    admin.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    remaining = [int(get(client, path, ip).headers["X-RateLimit-Remaining"])]
    assert seen == [], "loaded again and served by the lane"

    link = fast_app.wsgi_app._link.connection
    host, port = link._sock.getsockname()[:2]
    assert admin.client_kill(f"{host}:{port}")  # the lane's own connection, nobody else's
    response = get(client, path, ip)  # the lane's call fails: Flask answers it
    assert response.status_code == 200
    assert seen == [path]
    remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    served = get(client, path, ip)  # a fresh connection: the lane again
    assert seen == [path]
    remaining.append(int(served.headers["X-RateLimit-Remaining"]))
    assert remaining == [remaining[0], remaining[0] - 1, remaining[0] - 2], "one hit each"
    assert fast_app.wsgi_app._link.connection is not link
    admin.close()


def test_each_process_uses_its_own_connection(fast, account) -> None:
    """A forked worker never shares the parent's socket (a reply could reach the wrong one)."""
    import os

    fast_app, _ = fast
    client, ip = warmed(fast, account.id)
    assert get(client, f"/api/users/{account.id}", ip).status_code == 200
    parent = fast_app.wsgi_app._link.connection
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: serve one read through the lane, report whether it reconnected
        try:
            ok = get(client, f"/api/users/{account.id}", ip).status_code == 200
            fresh = fast_app.wsgi_app._link.connection is not parent
            os.write(write, b"1" if ok and fresh else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert fast_app.wsgi_app._link.connection is parent
    assert get(client, f"/api/users/{account.id}", ip).status_code == 200


def test_a_published_post_is_served_and_a_draft_is_not(fast, full, account) -> None:
    fast_app, fast_seen = fast
    full_app, _ = full
    published = account.post_as("Out there", status="published")
    draft = account.post_as("Not yet", status="draft")
    ip = fresh_ip()
    for post in (published, draft):  # the author's reads fill the cache with both
        reader = full_app.test_client()
        assert reader.get(f"/api/posts/{post['id']}", headers=account.headers).status_code == 200
    fast_seen.clear()

    path = f"/api/posts/{published['id']}"
    served = get(fast_app.test_client(), path, ip)
    answered = get(full_app.test_client(), path, ip)
    assert fast_seen == []
    assert served.status_code == answered.status_code == 200
    assert served.get_data() == answered.get_data()
    assert stable(served.headers) == stable(answered.headers)
    assert served.headers["X-RateLimit-Remaining"] == "99"
    assert answered.headers["X-RateLimit-Remaining"] == "98"

    hidden = get(fast_app.test_client(), f"/api/posts/{draft['id']}", ip)
    assert_error(hidden, 404, "NOT_FOUND")  # Flask's answer: a draft is the author's only
    assert fast_seen == [f"/api/posts/{draft['id']}"]
    assert hidden.headers["X-RateLimit-Remaining"] == "97", "handed over, charged once"
