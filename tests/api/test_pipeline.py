"""The request pipeline's order (app/core/middleware.py): request id -> hygiene -> auth
(identify) -> rate limit -> auth (enforce) -> validate -> handler, with the access log around it."""

from __future__ import annotations

import logging

from flask import Flask

from tests.support.assertions import assert_error
from tests.support.limits import fresh_ip, get, limited_app


def test_hooks_run_in_the_documented_order(app: Flask) -> None:
    limited = limited_app(app)
    names = [getattr(f, "__name__", "") for f in limited.before_request_funcs[None]]
    # The metrics timer first (so a 413 or a 429 is timed too), then the pipeline proper.
    assert names == [
        "_start_timer",
        "_start",
        "_check_uri",
        "_check_body",
        "_identify",
        "_check_request_limit",
    ]


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


def test_a_revoked_token_is_limited_per_user_before_the_blocklist_is_asked(
    app: Flask, account
) -> None:
    """Identify (signature only) keys the limit on the user; enforcement (the blocklist) runs
    after it, so once the window is spent a revoked token gets 429, not another lookup."""
    client = limited_app(app, RATELIMIT_AUTHENTICATED="3/minute").test_client()
    ip = fresh_ip()
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    # The logout spent one of the user's three; two more reach the blocklist and get 401.
    statuses = [get(client, "/api/me", ip, **account.headers).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]
    refused = get(client, "/api/me", fresh_ip(), **account.headers)  # any address: per user
    assert_error(refused, 429, "RATE_LIMITED")


def test_access_log_names_the_user_when_known(app: Flask, client, account, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/api/me", headers=account.headers)
        client.get("/api/posts")
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert lines[-2].user_id == str(account.id)
    assert lines[-2].route == "/api/me"
    assert lines[-1].user_id is None
    assert lines[-1].status == 200
