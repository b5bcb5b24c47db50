"""The production server for real: gunicorn (several workers) serving the contract's main flow
over HTTP, and stopping gracefully on SIGTERM."""

from __future__ import annotations

import signal


def test_main_flow_over_http(server) -> None:
    http, _ = server
    status, headers, body = http.call(
        "POST",
        "/api/users",
        {"email": "flow@example.com", "username": "flow", "password": "flow-password"},
    )
    assert status == 201, body
    user_id = body["data"]["id"]
    assert headers["Location"].endswith(f"/api/users/{user_id}")
    assert headers["X-Request-ID"]

    status, _, body = http.call(
        "POST", "/api/auth/login", {"email": "FLOW@example.com", "password": "flow-password"}
    )
    assert status == 200
    auth = {"Authorization": f"Bearer {body['data']['access_token']}"}

    status, _, body = http.call(
        "POST", f"/api/users/{user_id}/posts", {"title": "Over HTTP", "status": "published"}, auth
    )
    assert status == 201
    post_id = body["data"]["id"]

    status, _, body = http.call("GET", "/api/posts?per_page=10")
    assert status == 200
    assert [p["id"] for p in body["data"]] == [post_id]

    status, headers, body = http.call(
        "PATCH", f"/api/posts/{post_id}", {"title": "Edited"}, {**auth, "If-Match": '"v1"'}
    )
    assert status == 200
    assert body["data"]["title"] == "Edited"
    assert headers["ETag"] == '"v2"'

    status, _, body = http.call("DELETE", f"/api/posts/{post_id}", headers=auth)
    assert (status, body) == (204, None)
    status, _, body = http.call("GET", f"/api/posts/{post_id}")
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"


def test_sigterm_exits_zero(server) -> None:
    http, proc = server
    assert http.call("GET", "/health")[0] == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=35) == 0
