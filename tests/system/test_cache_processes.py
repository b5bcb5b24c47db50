"""The read cache (contract §5) across processes: a gunicorn and this process share one cache, and
Redis down, slow or restarted (a redis-server of the test's own) degrades to the database through
the circuit breaker instead of failing or serving stale data.

The in-process cache tests are in tests/api/test_cache.py; the real-worker ones in
tests/system/test_cache_workers.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from app import create_app
from app.users.cache import USER_KIND
from tests.support.backends import CACHE_DIR, test_config
from tests.support.cache import entry, sql_statements, the_cache, touching
from tests.support.live import live_server
from tests.support.redis_server import OwnRedis

# Several processes on one cache -------------------------------------------------------------


def test_a_write_in_one_process_is_never_followed_by_a_stale_read_in_another(
    app, client, account, tmp_path: Path
) -> None:
    """The in-process app and a gunicorn (two more processes) share the cache: Redis, or the disk
    cache in CACHE_DIR. Each round: both sides hold the current state cached, one writes, the
    other reads at once."""
    user_path = f"/api/users/{account.id}"
    post = account.post_as("round -1", status="published")
    post_path = f"/api/posts/{post['id']}"
    with live_server(app, tmp_path, CACHE_DIR=CACHE_DIR) as (http, _):

        def remote_get(path: str) -> tuple[int, dict | None]:
            status, _headers, body = http.call("GET", path)
            return status, body

        for i in range(8):
            name, title = f"name {i}", f"round {i}"
            for path in (user_path, post_path):  # warm both sides with the current state
                assert client.get(path).status_code == 200
                assert remote_get(path)[0] == 200
            if i % 2 == 0:
                assert (
                    client.patch(
                        user_path, json={"display_name": name}, headers=account.headers
                    ).status_code
                    == 200
                )
                assert (
                    client.patch(
                        post_path, json={"title": title}, headers=account.headers
                    ).status_code
                    == 200
                )
                for _ in range(3):  # either gunicorn worker
                    assert remote_get(user_path)[1]["data"]["display_name"] == name
                    assert remote_get(post_path)[1]["data"]["title"] == title
            else:
                status, _h, _b = http.call(
                    "PATCH", user_path, {"display_name": name}, account.headers
                )
                assert status == 200
                status, _h, _b = http.call("PATCH", post_path, {"title": title}, account.headers)
                assert status == 200
                assert client.get(user_path).json["data"]["display_name"] == name
                assert client.get(post_path).json["data"]["title"] == title
            assert entry(USER_KIND, account.id)["v"] == i + 2

        status, _h, _b = http.call("DELETE", post_path, headers=account.headers)
        assert status == 204
        assert client.get(post_path, headers=account.headers).status_code == 404
        assert client.get(post_path).status_code == 404


# Redis down or slow -------------------------------------------------------------------------


def _timed_get(client: FlaskClient, path: str) -> Any:
    started = time.monotonic()
    response = client.get(path)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.get_data(as_text=True)
    assert elapsed < 1.0, f"GET took {elapsed:.2f} s with the cache unavailable"
    return response


def test_redis_down_serves_from_the_database_and_the_breaker_opens_then_recovers(
    database_uri, client, account, own_redis: OwnRedis, monkeypatch
) -> None:
    fail_max = 3
    app2 = create_app(
        test_config(
            database_uri,
            REDIS_URL=own_redis.url,
            CACHE_BREAKER_FAIL_MAX=fail_max,
            CACHE_BREAKER_RESET_SECONDS=1,
        )
    )
    web = app2.test_client()
    path = f"/api/users/{account.id}"
    cache = the_cache(app2)
    assert cache.breaker.current_state == "closed"

    good = _timed_get(web, path)
    assert entry(USER_KIND, account.id, redis_url=own_redis.url)["v"] == 1
    with sql_statements(app2) as hit_sql:
        assert _timed_get(web, path).get_data() == good.get_data()
    assert touching(hit_sql, "users") == []

    own_redis.kill()
    health = web.get("/health")
    assert health.status_code == 200
    assert health.json["status"] == "degraded"
    assert health.json["checks"]["cache"] == "disconnected"

    # Each GET is a failed read (and a failed fill): the breaker opens after fail_max failures.
    for _ in range(fail_max):
        with sql_statements(app2) as down_sql:
            assert _timed_get(web, path).get_data() == good.get_data()
        assert touching(down_sql, "users"), "served from the database"
    assert cache.breaker.current_state == "open"

    # Open: the cache is not even tried.
    tried: list[str] = []
    real_get = cache.backend.get
    monkeypatch.setattr(cache.backend, "get", lambda key: tried.append(key) or real_get(key))
    assert _timed_get(web, path).get_data() == good.get_data()
    assert tried == []
    assert cache.breaker.current_state == "open"

    # Redis is back: after the reset timeout the cache is used again.
    own_redis.start()
    time.sleep(1.2)
    assert _timed_get(web, path).get_data() == good.get_data()
    assert tried, "the half-open trial reached Redis"
    assert cache.breaker.current_state == "closed"
    assert entry(USER_KIND, account.id, redis_url=own_redis.url)["v"] == 1  # filled again
    with sql_statements(app2) as hit_sql:
        assert _timed_get(web, path).get_data() == good.get_data()
    assert touching(hit_sql, "users") == []
    assert web.get("/health").json["checks"]["cache"] == "connected"


def test_a_slow_redis_degrades_a_get_instead_of_hanging_it(
    database_uri, client, account, own_redis: OwnRedis
) -> None:
    app2 = create_app(test_config(database_uri, REDIS_URL=own_redis.url, CACHE_BREAKER_FAIL_MAX=10))
    web = app2.test_client()
    post = account.post_as("Slow", status="published")
    path = f"/api/posts/{post['id']}"
    good = _timed_get(web, path)

    with own_redis.client() as admin_conn:
        admin_conn.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # every command waits 2 s
    for _ in range(2):
        assert _timed_get(web, path).get_data() == good.get_data()
    time.sleep(2.1)
    with sql_statements(app2) as hit_sql:
        assert _timed_get(web, path).get_data() == good.get_data()
    assert touching(hit_sql, "posts") == [], "the cache serves again once Redis answers"


def test_a_write_while_redis_is_down_is_not_undone_by_a_restart_from_persisted_data(
    database_uri, client, account, own_redis: OwnRedis
) -> None:
    """The tombstone the outage swallowed is written first when Redis is back (per process:
    a process that exits before then leaves the TTL as the bound, see docs/caching.md)."""
    app2 = create_app(
        test_config(database_uri, REDIS_URL=own_redis.url, CACHE_BREAKER_RESET_SECONDS=0.2)
    )
    web = app2.test_client()
    path = f"/api/users/{account.id}"
    assert _timed_get(web, path).json["data"]["bio"] != "written while down"
    with own_redis.client() as admin_conn:
        admin_conn.save()  # what RDB/AOF persistence does in production
    own_redis.kill()
    patched = web.patch(path, json={"bio": "written while down"}, headers=account.headers)
    assert patched.status_code == 200
    own_redis.start(persist=True)
    time.sleep(0.3)
    assert _timed_get(web, path).json["data"]["bio"] == "written while down"
