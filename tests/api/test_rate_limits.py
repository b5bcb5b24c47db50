"""Rate limits (contract §6): per user when authenticated, per IP otherwise, sliding windows,
stricter limits for login and registration, shared by every web process through Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.factories import PASSWORD, unique
from tests.support.assertions import assert_error
from tests.support.backends import needs_redis
from tests.support.limits import fresh_ip, get, limited_app
from tests.support.live import live_server

LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def test_anonymous_limit_per_ip_with_429_envelope_and_headers(app):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    for expected_remaining in (4, 3, 2, 1, 0):
        response = get(client, "/api/posts", ip)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(expected_remaining)
        assert int(response.headers["X-RateLimit-Reset"]) > time.time()
        assert "Retry-After" not in response.headers
    refused = get(client, "/api/posts", ip)
    assert_error(refused, 429, "RATE_LIMITED")
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    for name in LIMIT_HEADERS:
        assert name in refused.headers
    # Another client IP has its own window.
    assert get(client, "/api/posts", fresh_ip()).status_code == 200


def test_authenticated_limit_is_per_user_not_per_ip(app, make_account):
    limited = limited_app(app)
    client = limited.test_client()
    alice, bob = make_account(), make_account()
    ips = [fresh_ip() for _ in range(8)]
    for ip in ips:  # one user, many addresses: one shared window of 8
        assert get(client, "/api/me", ip, **alice.headers).status_code == 200
    assert_error(get(client, "/api/me", fresh_ip(), **alice.headers), 429, "RATE_LIMITED")
    # Bob, from one of Alice's addresses, is not affected by Alice's count.
    response = get(client, "/api/me", ips[0], **bob.headers)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "8"


def test_one_budget_per_caller_across_routes(app, account):
    """RATELIMIT_AUTHENTICATED is the caller's budget for the whole API, not per route."""
    client = limited_app(app).test_client()
    ip = fresh_ip()
    paths = ["/api/me", "/api/posts", f"/api/users/{account.id}", "/api/users"]
    remaining = [
        int(get(client, paths[i % 4], ip, **account.headers).headers["X-RateLimit-Remaining"])
        for i in range(8)
    ]
    assert remaining == [7, 6, 5, 4, 3, 2, 1, 0]
    assert_error(
        get(client, f"/api/users/{account.id}/posts", ip, **account.headers), 429, "RATE_LIMITED"
    )


def test_a_forged_token_counts_against_the_ip(app, account):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    forged = account.headers["Authorization"][:-4] + "AAAA"
    for _ in range(5):
        response = get(client, "/api/posts", ip, Authorization=forged)
        assert response.headers["X-RateLimit-Limit"] == "5"  # the anonymous limit
    assert_error(get(client, "/api/posts", ip, Authorization=forged), 429, "RATE_LIMITED")


def test_registration_has_its_own_stricter_limit(app, row_counts):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    for _ in range(2):
        name = unique()
        response = client.post(
            "/api/users",
            json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
            environ_base={"REMOTE_ADDR": ip},
        )
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "2"
    before = row_counts()
    name = unique()
    refused = client.post(
        "/api/users",
        json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        environ_base={"REMOTE_ADDR": ip},
    )
    assert_error(refused, 429, "RATE_LIMITED")
    assert row_counts() == before
    # Listing users from the same address is still under the ordinary limit.
    assert get(client, "/api/users", ip).status_code == 200


def test_login_has_its_own_stricter_limit(app, account):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    body = {"email": account.email, "password": PASSWORD}
    for _ in range(3):
        assert (
            client.post("/api/auth/login", json=body, environ_base={"REMOTE_ADDR": ip}).status_code
            == 200
        )
    refused = client.post("/api/auth/login", json=body, environ_base={"REMOTE_ADDR": ip})
    assert_error(refused, 429, "RATE_LIMITED")
    assert refused.headers["X-RateLimit-Limit"] == "3"


def test_probes_and_docs_are_never_limited(app):
    client = limited_app(app, RATELIMIT_ANONYMOUS="1/minute").test_client()
    ip = fresh_ip()
    for _ in range(5):
        for path in ("/health", "/ready", "/api/openapi.json"):
            response = get(client, path, ip)
            assert response.status_code == 200, path
            assert "X-RateLimit-Limit" not in response.headers


def test_x_forwarded_for_is_ignored_without_trusted_proxies(app):
    client = limited_app(app).test_client()
    ip = fresh_ip()
    for i in range(5):
        assert (
            get(client, "/api/posts", ip, **{"X-Forwarded-For": f"192.0.2.{i}"}).status_code == 200
        )
    spoofed = get(client, "/api/posts", ip, **{"X-Forwarded-For": "192.0.2.200"})
    assert_error(spoofed, 429, "RATE_LIMITED")


def test_x_forwarded_for_is_used_behind_a_trusted_proxy(app):
    client = limited_app(app, TRUSTED_PROXY_COUNT=1).test_client()
    proxy = fresh_ip()
    clients = [fresh_ip() for _ in range(2)]
    for _ in range(5):
        assert (
            get(client, "/api/posts", proxy, **{"X-Forwarded-For": clients[0]}).status_code == 200
        )
    assert_error(
        get(client, "/api/posts", proxy, **{"X-Forwarded-For": clients[0]}), 429, "RATE_LIMITED"
    )
    # Another client behind the same proxy has its own window; a client cannot prepend a fake
    # address to escape it (only the last hop, the one our proxy added, is trusted).
    assert get(client, "/api/posts", proxy, **{"X-Forwarded-For": clients[1]}).status_code == 200
    spoof = f"198.51.100.7, {clients[0]}"
    assert_error(
        get(client, "/api/posts", proxy, **{"X-Forwarded-For": spoof}), 429, "RATE_LIMITED"
    )


def test_requests_are_served_when_the_limit_store_is_down(app):
    """Redis unreachable: no 500; limiting falls back to this process' memory."""
    down = limited_app(app, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    ip = fresh_ip()
    statuses = [get(down, "/api/posts", ip).status_code for _ in range(7)]
    assert 500 not in statuses
    assert statuses[:5] == [200] * 5
    assert statuses[5:] == [429, 429]


@needs_redis
def test_two_gunicorn_instances_share_one_limit(app, tmp_path: Path) -> None:
    """Two separate servers on one Redis: requests split across them hit 429 at the shared
    limit, not at twice it."""
    env = {"RATELIMIT_ENABLED": "true", "RATELIMIT_ANONYMOUS": "10/minute"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        live_server(app, tmp_path / "a", **env) as (first, _),
        live_server(app, tmp_path / "b", **env) as (second, _),
    ):
        statuses = []
        for i in range(14):
            server = first if i % 2 == 0 else second
            status, headers, body = server.call("GET", "/api/posts?per_page=1")
            statuses.append(status)
            if status == 429:
                assert body["error"]["code"] == "RATE_LIMITED"
                assert "Retry-After" in headers
        assert statuses[:10] == [200] * 10
        assert statuses[10:] == [429] * 4


@pytest.mark.parametrize("setting", ["RATELIMIT_ANONYMOUS", "RATELIMIT_LOGIN"])
def test_one_limit_per_setting_or_the_app_refuses_to_start(app, setting: str) -> None:
    """The limiter keeps one window per caller: several limits in one setting would be silently
    dropped, so the app refuses them at start-up instead of at the first request."""
    from app.settings import ConfigError

    with pytest.raises(ConfigError, match="exactly one limit"):
        limited_app(app, **{setting: "1/second;5/minute"})
