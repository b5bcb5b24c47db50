"""Contract §6 on the embedded default: without Redis, every process of the service counts
against one window (issue #13 item 13: `make run` let 16 of a login limit of 10 through, and
X-RateLimit-Remaining jumped back up, because each gunicorn worker counted on its own)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from flask import Flask

from tests.support.live import live_server


@pytest.mark.slow
def test_workers_and_instances_without_redis_share_one_window(app: Flask, tmp_path: Path) -> None:
    shared_cache = tmp_path / "cache"
    env = {
        "REDIS_URL": "",  # the embedded default, whichever phase the suite runs in
        "CACHE_DIR": str(shared_cache),
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_LOGIN": "10/minute",
        "WEB_CONCURRENCY": "3",
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        live_server(app, tmp_path / "a", **env) as (first, _),
        live_server(app, tmp_path / "b", **env) as (second, _),
    ):
        statuses, remaining = [], []
        for i in range(14):
            server = first if i % 2 == 0 else second  # each call a new connection, any worker
            # A new unknown email each time: the per-account throttle never answers first.
            body = {"email": f"nobody-{uuid.uuid4().hex[:8]}@example.com", "password": "x" * 12}
            status, headers, _body = server.call("POST", "/api/auth/login", body)
            statuses.append(status)
            remaining.append(int(headers["X-RateLimit-Remaining"]))
    assert statuses[:10] == [401] * 10, statuses
    assert statuses[10:] == [429] * 4, statuses
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0], remaining
