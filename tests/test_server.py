"""The production server for real: gunicorn (several workers) serving the contract's main flow
over HTTP, and stopping gracefully on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None, headers: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return response.status, dict(response.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, dict(exc.headers), json.loads(raw) if raw else None


@pytest.fixture
def server(app, tmp_path: Path) -> Iterator[tuple[Http, subprocess.Popen]]:
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": REDIS_URL or "",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "INSTANCE_PATH": str(tmp_path),
    }
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = Http(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http.call("GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gunicorn did not come up: " + (tmp_path / "gunicorn.log").read_text()[-2000:])
    try:
        yield http, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


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
