"""Cache-aside for a list aggregate: a user's post count, the `meta.total` of
`GET /api/users/{id}/posts` in offset mode (issue 5).

Two counts per user (published: what others see; all live posts: what the author and admins
see), stored under a per-user generation that every write changing them bumps after its commit.
Runs on both backends: Redis when REDIS_URL is set, else the shared disk cache in CACHE_DIR. The
Redis-down test starts and kills a redis-server of its own (on either backend).
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from app import create_app
from app.core.cache import app_cache, cache_key
from app.core.pagination import CursorCodec
from app.extensions import db
from app.posts.cache import USER_POST_COUNT_KIND, USER_POSTS_GEN
from app.posts.service import PostService
from tests.conftest import CACHE_DIR, Account, test_config
from tests.live import Http, live_server
from tests.test_cache import OwnRedis, entry, raw_entry, sql_statements
from tests.test_cache_workers import Worker, broker_settings, wait_for
from tests.test_metrics import scrape, value

COUNT_SQL = re.compile(r"\bcount\(", re.IGNORECASE)


def total(client: FlaskClient, user_id: str, headers: dict[str, str] | None = None) -> int:
    response = client.get(f"/api/users/{user_id}/posts", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "total_is_estimate" not in response.json["meta"]
    return int(response.json["meta"]["total"])


def totals(client: FlaskClient, account: Account) -> tuple[int, int]:
    """(what an anonymous caller sees, what the author sees)."""
    return total(client, account.id), total(client, account.id, account.headers)


def remote_total(http: Http, user_id: str, headers: dict[str, str] | None = None) -> int:
    status, _headers, body = http.call("GET", f"/api/users/{user_id}/posts", headers=headers)
    assert status == 200, body
    return int(body["meta"]["total"])


def generation(user_id: str, *, redis_url: str | None = None) -> bytes | None:
    kwargs = {"redis_url": redis_url} if redis_url else {}
    return raw_entry(USER_POSTS_GEN, user_id, **kwargs)


# The default PAGINATION_EXACT_COUNT_LIMIT: every count here is under it.
EXACT_COUNT_LIMIT = 100_000


def cached_count(user_id: str, part: str, *, redis_url: str | None = None) -> dict | None:
    """The count entry if it is valid (stored under the current generation), else None; the
    exact-count limit it was counted under is checked, then left out."""
    kwargs = {"redis_url": redis_url} if redis_url else {}
    stored = entry(USER_POST_COUNT_KIND, f"{user_id}:{part}", **kwargs)
    current = generation(user_id, **kwargs)
    if stored is None or current is None or stored["g"] != current.decode():
        return None
    data = dict(stored["d"])
    assert data.pop("limit") == EXACT_COUNT_LIMIT
    return data


def hide_all_posts_behind_the_apps_back(app: Flask) -> None:
    """Soft-delete every post with raw SQL: no service, no cache invalidation."""
    with app.app_context():
        db.session.execute(sa.text("UPDATE posts SET deleted_at = CURRENT_TIMESTAMP"))
        db.session.commit()
        db.session.remove()


def counting(statements: list[str]) -> list[str]:
    return [s for s in statements if COUNT_SQL.search(s) and "posts" in s]


@pytest.fixture
def slow_service(app: Flask) -> Iterator[PostService]:
    """A PostService on a session of its own (a worker's, or another request's)."""
    with app.app_context():
        engine, cache = db.engine, app_cache()
    service = PostService(Session(engine), codec=CursorCodec(app.config["SECRET_KEY"]), cache=cache)
    try:
        yield service
    finally:
        service.session.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of our own (tests/test_cache.py's OwnRedis), to kill and restart."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: this test starts and kills its own Redis")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# 1. Served from the cache ----------------------------------------------------------------------


def test_the_total_is_served_from_the_cache_until_a_write(app, client, account) -> None:
    assert cache_key(USER_POSTS_GEN, account.id) == (
        f"postboard:cache:v3:user_posts_gen:{account.id}"
    )
    account.post_as("one", status="published")
    account.post_as("two", status="published")
    account.post_as("draft")

    with sql_statements(app) as first_sql:
        assert totals(client, account) == (2, 3)
    assert counting(first_sql), "a miss counts in the database (the listener sees it)"
    assert cached_count(account.id, "published") == {"total": 2, "estimate": False}
    assert cached_count(account.id, "all") == {"total": 3, "estimate": False}

    with sql_statements(app) as second_sql:
        assert totals(client, account) == (2, 3)
    assert counting(second_sql) == [], second_sql

    # Proof it is the cache: the database now has no live post, the total still says 2 / 3.
    hide_all_posts_behind_the_apps_back(app)
    listed = client.get(f"/api/users/{account.id}/posts")
    assert listed.json["data"] == []
    assert listed.json["meta"]["total"] == 2
    assert totals(client, account) == (2, 3)

    # A write through the API: the next read recounts (the hidden posts stay hidden).
    account.post_as("three", status="published")
    assert totals(client, account) == (1, 1)


def test_hits_and_misses_are_counted_as_user_post_count(client, account) -> None:
    hits, misses = "postboard_cache_hits_total", "postboard_cache_misses_total"
    kind = USER_POST_COUNT_KIND
    before = scrape(client)
    total(client, account.id)
    middle = scrape(client)
    total(client, account.id)
    after = scrape(client)
    assert value(middle, misses, kind=kind) - value(before, misses, kind=kind) == 1
    assert value(middle, hits, kind=kind) - value(before, hits, kind=kind) == 0
    assert value(after, hits, kind=kind) - value(middle, hits, kind=kind) == 1
    assert value(after, misses, kind=kind) - value(middle, misses, kind=kind) == 0


# 2. Every write kind changes the total at once ------------------------------------------------


def test_every_write_kind_changes_the_total_immediately(app, client, account, admin) -> None:
    def seen() -> tuple[int, int, int]:
        anonymous, author = totals(client, account)
        return anonymous, author, total(client, account.id, admin.headers)

    assert seen() == (0, 0, 0)  # each read fills: every write below starts from a cached count
    draft = account.post_as("draft")
    assert seen() == (0, 1, 1)
    path = f"/api/posts/{draft['id']}"
    assert (
        client.patch(path, json={"status": "published"}, headers=account.headers).status_code == 200
    )
    assert seen() == (1, 1, 1)
    assert client.patch(path, json={"status": "draft"}, headers=account.headers).status_code == 200
    assert seen() == (0, 1, 1)
    assert (
        client.patch(path, json={"status": "published"}, headers=admin.headers).status_code == 200
    )
    other = account.post_as("other", status="published")
    assert seen() == (2, 2, 2)

    # A change that leaves the counts alone keeps the generation (and the cached counts).
    before = generation(account.id)
    assert client.patch(path, json={"title": "renamed"}, headers=account.headers).status_code == 200
    assert generation(account.id) == before
    assert cached_count(account.id, "published") == {"total": 2, "estimate": False}

    assert client.delete(f"/api/posts/{other['id']}", headers=account.headers).status_code == 204
    assert seen() == (1, 1, 1)

    # Deleting the user: a new generation (the list itself is a 404 from now on).
    before = generation(account.id)
    assert client.delete(f"/api/users/{account.id}", headers=admin.headers).status_code == 204
    assert generation(account.id) not in (None, before)
    assert cached_count(account.id, "published") is None
    assert cached_count(account.id, "all") is None
    assert client.get(f"/api/users/{account.id}/posts").status_code == 404


def test_a_lost_generation_never_revives_an_old_count(app, client, account) -> None:
    """An evicted or expired generation key restarts at a random value, not at an old one."""
    account.post_as("one", status="published")
    assert total(client, account.id) == 1
    old = generation(account.id)
    assert old is not None
    assert int(old) > 1  # a random start, not 0 or 1

    with app.app_context():
        backend = app_cache().backend
        assert backend is not None
        if hasattr(backend, "client"):
            backend.client.delete(cache_key(USER_POSTS_GEN, account.id))
        else:
            backend.cache.delete(cache_key(USER_POSTS_GEN, account.id))
    hide_all_posts_behind_the_apps_back(app)
    assert total(client, account.id) == 0  # the old entry (under `old`) is not served
    assert generation(account.id) != old


# 3. Another web process ------------------------------------------------------------------------


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


# 4. The race: a count computed under an old generation loses ----------------------------------


def test_a_slow_reader_cannot_store_a_count_from_before_a_write(
    app, client, account, slow_service: PostService
) -> None:
    account.post_as("one", status="published")
    author = slow_service.users.get(uuid.UUID(account.id))
    assert author is not None
    real_count = slow_service.posts.count_by_author

    def count_then_a_write_lands(author_id: int, **kwargs: Any) -> tuple[int, bool]:
        counted = real_count(author_id, **kwargs)  # 1: the state before the write
        account.post_as("two", status="published")  # commits and bumps the generation
        return counted

    slow_service.posts.count_by_author = count_then_a_write_lands  # type: ignore[method-assign]
    counted = slow_service.author_total(author, include_drafts=False, limit=100_000)
    assert counted == (1, False)  # what the slow reader answers its own (concurrent) request
    assert cached_count(account.id, "published") is None, "the stale count was refused"
    assert total(client, account.id) == 2
    assert cached_count(account.id, "published") == {"total": 2, "estimate": False}


def test_a_slow_write_through_never_overwrites_a_newer_write(
    app, client, account, slow_service: PostService
) -> None:
    account.post_as("one", status="published")
    assert totals(client, account) == (1, 1)
    real_count = slow_service.posts.count_by_author
    calls: list[bool] = []

    def stall_then_count(author_id: int, **kwargs: Any) -> tuple[int, bool]:
        calls.append(kwargs["include_drafts"])
        counted = real_count(author_id, **kwargs)
        if len(calls) == 2:  # both counts taken: a newer write lands before the fill
            account.post_as("two")
            assert totals(client, account) == (1, 2)  # and a reader caches the new state
        return counted

    slow_service.posts.count_by_author = stall_then_count  # type: ignore[method-assign]
    assert slow_service.refresh_post_counts(uuid.UUID(account.id), limit=100_000) is False
    assert cached_count(account.id, "all") == {"total": 2, "estimate": False}
    assert totals(client, account) == (1, 2)

    # The same against a bump nobody has read after (the state right after a write).
    calls.clear()

    def stall_for_a_bump(author_id: int, **kwargs: Any) -> tuple[int, bool]:
        calls.append(kwargs["include_drafts"])
        counted = real_count(author_id, **kwargs)
        if len(calls) == 1:
            account.post_as("three", status="published")
        return counted

    slow_service.posts.count_by_author = stall_for_a_bump  # type: ignore[method-assign]
    assert slow_service.refresh_post_counts(uuid.UUID(account.id), limit=100_000) is False
    assert cached_count(account.id, "published") is None
    assert cached_count(account.id, "all") is None
    assert totals(client, account) == (2, 3)

    # A prompt write-through (the newer write's own task) stores both counts.
    slow_service.posts.count_by_author = real_count  # type: ignore[method-assign]
    slow_service.session.rollback()
    account.post_as("four")
    assert slow_service.refresh_post_counts(uuid.UUID(account.id), limit=100_000) is True
    assert cached_count(account.id, "published") == {"total": 2, "estimate": False}
    assert cached_count(account.id, "all") == {"total": 4, "estimate": False}
    with sql_statements(app) as hit_sql:
        assert totals(client, account) == (2, 4)
    assert counting(hit_sql) == []


# 5. Redis down ---------------------------------------------------------------------------------


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
    time.sleep(0.3)  # past the breaker's reset timeout
    assert totals(web, account) == (2, 2)
    assert cached_count(account.id, "published", redis_url=own_redis.url)["total"] == 2
    with sql_statements(app2) as hit_sql:
        assert totals(web, account) == (2, 2)
    assert counting(hit_sql) == [], "served from the cache again"


# 6. Write-through by a real worker -------------------------------------------------------------


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
