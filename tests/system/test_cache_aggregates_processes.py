"""The cached post count (`meta.total` of `GET /api/users/{id}/posts`) across processes: a write
in this process is seen by the next read in a gunicorn, Redis down (a redis-server of the test's
own) counts in the database without a later write being undone, and a real Celery worker writes
both counts through.

The in-process tests are in tests/api/test_cache_aggregates.py.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from app import create_app
from tests.support.backends import CACHE_DIR, test_config
from tests.support.cache import sql_statements
from tests.support.live import live_server
from tests.support.post_counts import (
    cached_count,
    counting,
    remote_total,
    totals,
)
from tests.support.redis_server import OwnRedis
from tests.support.workers import Worker, broker_settings, wait_for

# Another web process ------------------------------------------------------------------------


def test_a_write_in_one_process_is_seen_by_the_next_read_in_another(
    app, client, account, tmp_path: Path
) -> None:
    """The in-process app and a gunicorn (two more processes) share the cache and the DB."""
    with live_server(app, tmp_path, CACHE_DIR=CACHE_DIR) as (http, _):

        def warm_both(expected: tuple[int, int]) -> None:
            assert totals(client, account) == expected
            for _ in range(2):  # either gunicorn worker
                assert remote_total(http, account.id) == expected[0]
                assert remote_total(http, account.id, account.headers) == expected[1]

        warm_both((0, 0))
        first = account.post_as("here", status="published")  # written here, read there
        for _ in range(3):
            assert remote_total(http, account.id) == 1
        warm_both((1, 1))

        status, _h, body = http.call(  # written there, read here
            "POST", f"/api/users/{account.id}/posts", {"title": "there"}, account.headers
        )
        assert status == 201, body
        assert totals(client, account) == (1, 2)
        warm_both((1, 2))

        path = f"/api/posts/{body['data']['id']}"
        status, _h, _b = http.call("PATCH", path, {"status": "published"}, account.headers)
        assert status == 200
        assert totals(client, account) == (2, 2)
        warm_both((2, 2))

        assert (
            client.delete(f"/api/posts/{first['id']}", headers=account.headers).status_code == 204
        )
        for _ in range(3):
            assert remote_total(http, account.id) == 1
            assert remote_total(http, account.id, account.headers) == 1


# Redis down ---------------------------------------------------------------------------------


def test_redis_down_counts_in_the_database_and_a_write_during_it_is_not_undone(
    database_uri, client, account, own_redis: OwnRedis
) -> None:
    app2 = create_app(
        test_config(database_uri, REDIS_URL=own_redis.url, CACHE_BREAKER_RESET_SECONDS=0.2)
    )
    web = app2.test_client()
    account.post_as("one", status="published")
    assert totals(web, account) == (1, 1)
    assert cached_count(account.id, "published", redis_url=own_redis.url)["total"] == 1
    with own_redis.client() as admin_conn:
        admin_conn.save()  # what RDB/AOF persistence does in production
    own_redis.kill()

    with sql_statements(app2) as down_sql:
        assert totals(web, account) == (1, 1)
    assert counting(down_sql), "counted in the database"
    created = web.post(
        f"/api/users/{account.id}/posts",
        json={"title": "while down", "status": "published"},
        headers=account.headers,
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    assert totals(web, account) == (2, 2)

    # Redis comes back with the old generation and the old count (1): the bump the outage
    # swallowed is replayed before anything is read, so the old count is never served.
    own_redis.start(persist=True)

    def cached_again() -> bool:
        # Every read, before and after the breaker's background probe closes it, is right.
        assert totals(web, account) == (2, 2)
        entry = cached_count(account.id, "published", redis_url=own_redis.url)
        return entry is not None and entry["total"] == 2  # 1 only until the bump is replayed

    # The probe closes the breaker past its reset timeout (0.2 s), from a timer thread: on a
    # loaded machine that can take longer, so wait for it rather than sleep a fixed time.
    wait_for("the new count cached once Redis is back", cached_again, timeout=15)
    with sql_statements(app2) as hit_sql:
        assert totals(web, account) == (2, 2)
    assert counting(hit_sql) == [], "served from the cache again"


# Write-through by a real worker -------------------------------------------------------------


def test_a_real_worker_writes_both_counts_through_after_a_write(
    app: Flask, database_uri: str, account, tmp_path: Path
) -> None:
    broker = broker_settings(tmp_path)
    producer = create_app(test_config(database_uri, TASKS_ENABLED=True, **broker))
    web = producer.test_client()
    running = Worker(app, tmp_path, broker).start("--pool=solo")
    try:
        created = web.post(
            f"/api/users/{account.id}/posts",
            json={"title": "through", "status": "published"},
            headers=account.headers,
        )
        assert created.status_code == 201
        web.post(f"/api/users/{account.id}/posts", json={"title": "d"}, headers=account.headers)

        # Nobody lists the posts: only the worker can have stored these counts.
        def written_through() -> bool:
            return cached_count(account.id, "published") == {"total": 1, "estimate": False} and (
                cached_count(account.id, "all") == {"total": 2, "estimate": False}
            )

        wait_for("the worker to write both counts through", written_through)
        assert "cache.refresh_user_post_counts" in running.log()
        with sql_statements(producer) as hit_sql:
            assert totals(web, account) == (1, 2)
        assert counting(hit_sql) == []
    finally:
        running.stop()
