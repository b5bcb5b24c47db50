"""The read cache (contract §5): cache-aside single GETs, versioned entries, tombstones on write,
race safety of the version compare, several processes on one cache, Redis down or slow (the
circuit breaker), and the `flask cache` commands.

Runs on both backends: Redis when REDIS_URL is set, else the shared disk cache in CACHE_DIR.
The real-worker tests (write-through by Celery, warming, a worker killed mid-task) are in
tests/test_cache_workers.py.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from app import create_app
from app.core.cache import Cache, app_cache, cache_key
from app.core.pagination import CursorCodec
from app.extensions import db
from app.posts.cache import POST_KIND
from app.posts.cache import entry_data as post_cache_data
from app.posts.service import PostService
from app.users.cache import USER_KIND
from app.users.cache import entry_data as user_cache_data
from app.users.service import UserService
from tests.conftest import CACHE_DIR, REDIS_URL, Account, reset_cache, reset_redis, test_config
from tests.live import free_port, live_server

# Helpers (tests/test_cache_workers.py imports these) -------------------------------------------


def raw_entry(kind: str, public_id: object, *, redis_url: str | None = REDIS_URL) -> bytes | None:
    """The bytes stored for one resource, read straight from the backend (not through Cache)."""
    key = cache_key(kind, public_id)
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            return client.get(key)  # type: ignore[return-value]
        finally:
            client.close()
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        value = disk.get(key)
    assert value is None or isinstance(value, bytes), value
    return value


def entry(kind: str, public_id: object, *, redis_url: str | None = REDIS_URL) -> dict | None:
    """The stored entry, its MAC aside (tests/api/test_cache_integrity.py covers the MAC)."""
    raw = raw_entry(kind, public_id, redis_url=redis_url)
    if raw is None:
        return None
    stored = json.loads(raw)
    assert isinstance(stored.pop("m", None), str), "every entry carries its MAC"
    return stored


def cache_keys() -> set[str]:
    """Every key of this service's cache namespace in the backend."""
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return {k.decode() for k in client.scan_iter("postboard:cache:*", count=1000)}
        finally:
            client.close()
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        return {str(k) for k in disk.iterkeys() if str(k).startswith("postboard:cache:")}


@contextmanager
def sql_statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def touching(statements: list[str], *tables: str) -> list[str]:
    pattern = re.compile(rf"\b({'|'.join(tables)})\b", re.IGNORECASE)
    return [s for s in statements if pattern.search(s)]


def the_cache(app: Flask) -> Cache:
    with app.app_context():
        return app_cache()


# Fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nocache_app(database_uri: str) -> Flask:
    """The same service on the same database with the cache switched off."""
    return create_app(test_config(database_uri, CACHE_ENABLED=False))


@pytest.fixture
def other(make_account: Any) -> Account:
    return make_account()


# 1. Cache-aside --------------------------------------------------------------------------------


def test_get_fills_the_cache_and_the_second_get_runs_no_sql(app, client, account) -> None:
    assert cache_key(USER_KIND, account.id) == f"postboard:cache:v3:user:{account.id}"
    assert entry(USER_KIND, account.id) is None  # registering does not fill (no worker here)

    with sql_statements(app) as first_sql:
        first = client.get(f"/api/users/{account.id}")
    assert first.status_code == 200
    assert touching(first_sql, "users"), "the miss reads the database (the listener works)"
    stored = entry(USER_KIND, account.id)
    assert stored is not None
    assert stored["v"] == 1
    assert stored["d"]["public"]["username"] == account.user["username"]

    with sql_statements(app) as second_sql:
        second = client.get(f"/api/users/{account.id}")
    assert second.status_code == 200
    assert touching(second_sql, "users", "posts") == [], second_sql
    assert second.get_data() == first.get_data()
    assert second.headers["ETag"] == first.headers["ETag"] == '"v1"'

    post = account.post_as("Cached", body="text", status="published")
    with sql_statements(app) as first_sql:
        assert client.get(f"/api/posts/{post['id']}").status_code == 200
    assert touching(first_sql, "posts")
    assert entry(POST_KIND, post["id"])["v"] == 1
    with sql_statements(app) as second_sql:
        again = client.get(f"/api/posts/{post['id']}")
    assert again.status_code == 200
    assert again.json["data"]["title"] == "Cached"
    assert touching(second_sql, "users", "posts") == [], second_sql


def _no_op_patch(client: FlaskClient, path: str, field: str, value: Any, headers: dict) -> Any:
    """A PATCH that changes nothing: the current state, rendered through the response schema."""
    response = client.patch(path, json={field: value}, headers=headers)
    assert response.status_code == 200, response.json
    return response


def test_cached_bodies_are_byte_identical_to_uncached_ones(
    app, client, nocache_app, account
) -> None:
    plain = nocache_app.test_client()
    user_path = f"/api/users/{account.id}"
    post = account.post_as("Bytes", body='Ünïcode — and "quotes" <b>', status="published")
    post_path = f"/api/posts/{post['id']}"

    for path, headers in (
        (user_path, {}),  # public: no email
        (user_path, account.headers),  # the user themself: with the email
        (post_path, {}),
    ):
        miss = client.get(path, headers=headers)
        hit = client.get(path, headers=headers)
        uncached = plain.get(path, headers=headers)
        assert miss.status_code == hit.status_code == uncached.status_code == 200
        assert hit.get_data() == miss.get_data() == uncached.get_data(), path
        assert hit.headers["ETag"] == miss.headers["ETag"] == uncached.headers["ETag"]
        assert hit.headers["Content-Type"] == uncached.headers["Content-Type"]
    assert entry(USER_KIND, account.id) is not None
    assert entry(POST_KIND, post["id"]) is not None

    # The cached representation against the one the response schema renders (a no-op PATCH).
    private = client.get(user_path, headers=account.headers)
    assert private.json["data"]["email"] == account.email
    via_schema = _no_op_patch(
        client, user_path, "bio", private.json["data"]["bio"], account.headers
    )
    assert private.get_data() == via_schema.get_data()
    assert private.headers["ETag"] == via_schema.headers["ETag"]

    cached_post = client.get(post_path)
    via_schema = _no_op_patch(client, post_path, "title", "Bytes", account.headers)
    assert cached_post.get_data() == via_schema.get_data()
    assert cached_post.headers["ETag"] == via_schema.headers["ETag"]

    # The public user as listed (schema) and as cached, field by field and in the same order.
    public = client.get(user_path).json["data"]
    listed = [
        u for u in client.get("/api/users?per_page=100").json["data"] if u["id"] == account.id
    ]
    assert list(listed[0].items()) == list(public.items())


def test_the_cache_never_holds_the_email_in_clear_or_the_password_hash(app, client, account):
    account.post_as("Post", status="published")
    post_id = client.get(f"/api/users/{account.id}/posts").json["data"][0]["id"]
    assert client.get(f"/api/users/{account.id}", headers=account.headers).status_code == 200
    assert client.get(f"/api/users/{account.id}").status_code == 200
    assert client.get(f"/api/posts/{post_id}").status_code == 200

    with app.app_context():
        password_hash = (
            UserService(db.session(), codec=CursorCodec(app.config["SECRET_KEY"]))
            .get(uuid.UUID(account.id))
            .password_hash
        )
        db.session.remove()
    assert password_hash.startswith("$argon2")
    for raw in (raw_entry(USER_KIND, account.id), raw_entry(POST_KIND, post_id)):
        assert raw is not None
        for secret in (account.email, account.email.upper(), password_hash, "$argon2"):
            assert secret.encode() not in raw, raw
        assert b"password" not in raw.lower()
        assert json.dumps(account.email)[1:-1].encode() not in raw  # not even JSON-escaped
    sealed = json.loads(raw_entry(USER_KIND, account.id))["d"]["email"]
    assert the_cache(app).unseal(sealed) == account.email  # sealed, not dropped


# 2. Read after write ---------------------------------------------------------------------------


def test_user_read_after_write_is_never_stale(client, account) -> None:
    path = f"/api/users/{account.id}"
    assert client.get(path).json["data"]["display_name"] != "Second"
    assert client.get(path, headers=account.headers).status_code == 200  # both variants cached
    assert entry(USER_KIND, account.id)["v"] == 1

    patched = client.patch(path, json={"display_name": "Second"}, headers=account.headers)
    assert patched.status_code == 200
    assert entry(USER_KIND, account.id) == {"v": 2}  # the tombstone, before anyone reads

    fresh = client.get(path)
    assert fresh.status_code == 200
    assert fresh.json["data"]["display_name"] == "Second"
    assert fresh.json["data"]["version"] == 2
    assert fresh.headers["ETag"] == '"v2"'
    assert entry(USER_KIND, account.id)["d"]["public"]["display_name"] == "Second"

    new_email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    assert client.patch(path, json={"email": new_email}, headers=account.headers).status_code == 200
    mine = client.get(path, headers=account.headers)
    assert mine.json["data"]["email"] == new_email
    assert mine.json["data"]["version"] == 3
    assert client.get("/api/me", headers=account.headers).json["data"]["email"] == new_email


def test_post_read_after_write_and_delete(client, account, other) -> None:
    post = account.post_as("First", status="published")
    path = f"/api/posts/{post['id']}"
    assert client.get(path).json["data"]["title"] == "First"
    assert client.get(path, headers=other.headers).status_code == 200

    assert client.patch(path, json={"title": "Second"}, headers=account.headers).status_code == 200
    assert entry(POST_KIND, post["id"]) == {"v": 2}
    assert client.get(path).json["data"]["title"] == "Second"
    assert client.get(path, headers=other.headers).json["data"]["title"] == "Second"

    # Back to draft: hidden at once from everyone but its author, though it was cached public.
    assert client.patch(path, json={"status": "draft"}, headers=account.headers).status_code == 200
    assert client.get(path).status_code == 404
    assert client.get(path, headers=other.headers).status_code == 404
    assert client.get(path, headers=account.headers).json["data"]["status"] == "draft"

    assert client.delete(path, headers=account.headers).status_code == 204
    assert client.get(path, headers=account.headers).status_code == 404
    assert client.get(path).status_code == 404


def test_drafts_stay_hidden_from_others_even_when_cached(client, account, other, admin) -> None:
    draft = account.post_as("Secret draft", status="draft")
    path = f"/api/posts/{draft['id']}"
    assert client.get(path, headers=account.headers).status_code == 200  # the author fills it
    cached = entry(POST_KIND, draft["id"])
    assert cached is not None
    assert cached["d"]["status"] == "draft"

    missing = client.get(f"/api/posts/{uuid.uuid4()}")
    for headers in ({}, other.headers):
        for _ in range(2):  # a miss, then served from the cache: the same 404
            hidden = client.get(path, headers=headers)
            assert hidden.status_code == 404
            assert hidden.json == missing.json
    assert client.get(path, headers=admin.headers).status_code == 200
    assert client.get(path, headers=account.headers).json["data"]["title"] == "Secret draft"


def test_deleting_a_user_hides_the_user_and_their_cached_posts(client, account) -> None:
    post = account.post_as("Mine", status="published")
    user_path, post_path = f"/api/users/{account.id}", f"/api/posts/{post['id']}"
    assert client.get(user_path).status_code == 200
    assert client.get(post_path).status_code == 200
    assert entry(USER_KIND, account.id)
    assert entry(POST_KIND, post["id"])

    assert client.delete(user_path, headers=account.headers).status_code == 204
    assert client.get(user_path).status_code == 404
    assert client.get(post_path).status_code == 404
    assert "d" not in entry(POST_KIND, post["id"])  # tombstoned with the user


# 3. Race safety of the version compare ---------------------------------------------------------


def _service(app: Flask, kind: str) -> Any:
    """A service on the app's request-scoped session (use inside an app context)."""
    codec = CursorCodec(app.config["SECRET_KEY"])
    service = UserService if kind == USER_KIND else PostService
    return service(db.session(), codec=codec, cache=app_cache())


@contextmanager
def slow_worker(app: Flask, kind: str, stall: Any = None) -> Iterator[Any]:
    """A service on a session of its own, as a worker's; `stall()` runs between the moment its
    refresh_cache loads the row and the moment it writes it through (a slow worker)."""
    with app.app_context():
        engine, cache = db.engine, app_cache()
    codec = CursorCodec(app.config["SECRET_KEY"])
    service = (UserService if kind == USER_KIND else PostService)(
        Session(engine), codec=codec, cache=cache
    )
    repository = service.users if kind == USER_KIND else service.posts
    load = repository.get

    def load_then_stall(public_id: uuid.UUID) -> Any:
        loaded = load(public_id)
        if stall is not None:
            stall()
        return loaded

    repository.get = load_then_stall
    try:
        yield service
    finally:
        service.session.close()


def test_a_reader_that_loaded_before_a_write_cannot_put_the_old_state_back(
    app, client, account
) -> None:
    path = f"/api/users/{account.id}"
    with app.app_context():
        cache = app_cache()
        stale_user = _service(app, USER_KIND).get(uuid.UUID(account.id))
        stale = user_cache_data(stale_user, cache)  # a reader's v1, loaded before the write
        db.session.remove()

    assert client.patch(path, json={"bio": "v2 bio"}, headers=account.headers).status_code == 200
    cache.fill(USER_KIND, account.id, 1, stale)  # the slow reader fills after the tombstone
    assert entry(USER_KIND, account.id) == {"v": 2}
    body = client.get(path).json["data"]
    assert body["bio"] == "v2 bio"
    assert body["version"] == 2

    cache.fill(USER_KIND, account.id, 1, stale)  # and after the v2 value: refused as well
    assert entry(USER_KIND, account.id)["d"]["public"]["bio"] == "v2 bio"
    assert client.get(path).json["data"]["bio"] == "v2 bio"

    # Same for posts.
    post = account.post_as("v1 title", status="published")
    post_path = f"/api/posts/{post['id']}"
    with app.app_context():
        stale_post = post_cache_data(
            _service(app, POST_KIND).get(uuid.UUID(post["id"]), viewer=None)
        )
        db.session.remove()
    assert (
        client.patch(post_path, json={"title": "v2 title"}, headers=account.headers).status_code
        == 200
    )
    cache.fill(POST_KIND, post["id"], 1, stale_post)
    assert client.get(post_path).json["data"]["title"] == "v2 title"


def test_a_slow_write_through_never_overwrites_a_newer_state(app, client, account) -> None:
    path, pid = f"/api/users/{account.id}", uuid.UUID(account.id)
    assert client.patch(path, json={"bio": "two"}, headers=account.headers).status_code == 200

    def newer_write_lands() -> None:
        patched = client.patch(path, json={"bio": "three"}, headers=account.headers)
        assert patched.status_code == 200
        assert client.get(path).json["data"]["bio"] == "three"  # v3 cached by this read

    # The worker's refresh_cache loads v2, stalls while v3 is written and cached, then writes
    # its v2 through, late: refused.
    with slow_worker(app, USER_KIND, stall=newer_write_lands) as slow:
        assert slow.refresh_cache(pid) is True
    assert entry(USER_KIND, account.id)["v"] == 3
    assert client.get(path).json["data"]["bio"] == "three"

    # The same against a tombstone (nobody read v4 yet).
    def tombstone_lands() -> None:
        patched = client.patch(path, json={"bio": "four"}, headers=account.headers)
        assert patched.status_code == 200

    with slow_worker(app, USER_KIND, stall=tombstone_lands) as slow:
        assert slow.refresh_cache(pid) is True
    assert entry(USER_KIND, account.id) == {"v": 4}
    assert client.get(path).json["data"]["bio"] == "four"

    # An equal version is the write-through of the same state: it replaces the tombstone.
    assert client.patch(path, json={"bio": "five"}, headers=account.headers).status_code == 200
    assert entry(USER_KIND, account.id) == {"v": 5}
    with slow_worker(app, USER_KIND) as prompt:
        assert prompt.refresh_cache(pid) is True
    assert entry(USER_KIND, account.id)["d"]["public"]["bio"] == "five"


def test_a_slow_post_write_through_never_overwrites_a_newer_state(app, client, account) -> None:
    post = account.post_as("one", status="published")
    path, pid = f"/api/posts/{post['id']}", uuid.UUID(post["id"])

    def newer_write_lands() -> None:
        patched = client.patch(path, json={"title": "two"}, headers=account.headers)
        assert patched.status_code == 200

    with slow_worker(app, POST_KIND, stall=newer_write_lands) as slow:
        assert slow.refresh_cache(pid) is True  # writes v1 after the v2 tombstone: refused
    assert entry(POST_KIND, post["id"]) == {"v": 2}
    assert client.get(path).json["data"]["title"] == "two"
    with slow_worker(app, POST_KIND) as prompt:
        assert prompt.refresh_cache(pid) is True
    assert entry(POST_KIND, post["id"])["d"]["public"]["title"] == "two"


# 4. Several processes on one cache -------------------------------------------------------------


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


# 5. Redis down or slow -------------------------------------------------------------------------


class OwnRedis:
    """A redis-server of our own on a free port, to kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    def start(self, *, persist: bool = False) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", str(self.directory), "--dbfilename", "dump.rdb"]
        if not persist:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as probe:
                    if probe.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: these tests start and kill their own Redis")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


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


# 8. The `flask cache` commands -----------------------------------------------------------------


def test_cli_warm_fills_the_most_recent_entries(app, client, make_account) -> None:
    accounts = [make_account() for _ in range(4)]
    posts = [a.post_as(f"post {i}", status="published") for i, a in enumerate(accounts)]
    reset_redis()  # authenticated requests read their user through the cache: start empty
    reset_cache()
    assert cache_keys() == set()

    result = app.test_cli_runner().invoke(args=["cache", "warm", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "warmed 3 users and 3 posts" in result.output
    for a in accounts[1:]:
        assert entry(USER_KIND, a.id)["v"] == 1
    for p in posts[1:]:
        assert entry(POST_KIND, p["id"])["d"]["public"]["title"] == p["title"]
    assert entry(USER_KIND, accounts[0].id) is None  # the oldest is past the limit
    assert entry(POST_KIND, posts[0]["id"]) is None
    assert len(cache_keys()) == 6

    # A warmed entry serves reads exactly like a filled one.
    with sql_statements(app) as hit_sql:
        cached = client.get(f"/api/users/{accounts[3].id}")
    assert touching(hit_sql, "users") == []
    assert cached.json["data"]["username"] == accounts[3].user["username"]


def test_cli_stats_counts_hits_misses_and_keys(database_uri, client, account) -> None:
    post = account.post_as("Counted", status="published")
    reset_redis()  # the token check of post_as read the user through the cache: start empty
    reset_cache()
    fresh = create_app(test_config(database_uri))  # its own (empty) in-process counters
    web = fresh.test_client()
    for _ in range(3):
        assert web.get(f"/api/users/{account.id}").status_code == 200  # 1 miss, 2 hits
    for _ in range(2):
        assert web.get(f"/api/posts/{post['id']}").status_code == 200  # 1 miss, 1 hit
    assert web.get(f"/api/posts/{uuid.uuid4()}").status_code == 404  # 1 miss

    result = fresh.test_cli_runner().invoke(args=["cache", "stats"])
    assert result.exit_code == 0, result.output
    assert "hits 3  misses 3  hit ratio 50.0%  keys 2" in result.output


def test_cli_clear_removes_only_this_services_cache_keys(app, client, account) -> None:
    post = account.post_as("Cleared", status="published")
    assert client.get(f"/api/users/{account.id}").status_code == 200
    assert client.get(f"/api/posts/{post['id']}").status_code == 200
    assert len(cache_keys()) == 2
    marker = uuid.uuid4().hex
    unrelated = [f"otherapp:{marker}", f"postboard:unrelated:{marker}", f"postboard:lock:{marker}"]
    if REDIS_URL:
        store = redis.Redis.from_url(REDIS_URL)
        for key in unrelated:
            store.set(key, b"keep me", ex=60)
        survivors = lambda: [k for k in unrelated if store.get(k) == b"keep me"]  # noqa: E731
    else:
        import diskcache

        store = diskcache.Cache(CACHE_DIR)
        for key in unrelated:
            store.set(key, b"keep me", expire=60)
        survivors = lambda: [k for k in unrelated if store.get(k) == b"keep me"]  # noqa: E731
    try:
        result = app.test_cli_runner().invoke(args=["cache", "clear"])
        assert result.exit_code == 0, result.output
        assert "removed 2 keys" in result.output
        assert cache_keys() == set()
        assert survivors() == unrelated
        # And reads still work, refilling.
        assert client.get(f"/api/users/{account.id}").status_code == 200
        assert entry(USER_KIND, account.id)["v"] == 1
    finally:
        for key in unrelated:
            store.delete(key)
        store.close()


def test_cli_refuses_when_the_cache_is_disabled(nocache_app) -> None:
    result = nocache_app.test_cli_runner().invoke(args=["cache", "stats"])
    assert result.exit_code != 0
    assert "disabled" in result.output


def test_token_checks_read_the_user_through_the_cache(app, client, account) -> None:
    """The token's user is checked against its current state on every request, cached: a
    repeat authenticated request runs no users query, and a deleted user is refused at once."""
    assert client.get("/api/me", headers=account.headers).status_code == 200
    with sql_statements(app) as statements:
        assert client.get("/api/me", headers=account.headers).status_code == 200
    assert touching(statements, "users") == []
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    assert client.get("/api/me", headers=account.headers).status_code == 401


def test_every_event_a_write_records_has_its_effects_in_the_table(app, client, account) -> None:
    """The table of after-commit effects (app/events/handlers.py) covers every event type the
    API's writes record: none can commit without its cache tombstone or write-through."""
    from app.core.events import Event
    from app.events.handlers import EVENT_HANDLERS

    post = account.post_as("Covered", status="draft")
    path = f"/api/posts/{post['id']}"
    published = client.patch(path, json={"status": "published"}, headers=account.headers)
    assert published.status_code == 200
    assert client.delete(path, headers=account.headers).status_code == 204
    account.post_as("Goes with its author", status="published")
    me = f"/api/users/{account.id}"
    assert client.patch(me, json={"bio": "b"}, headers=account.headers).status_code == 200
    assert client.delete(me, headers=account.headers).status_code == 204
    with app.app_context():
        recorded = set(db.session.scalars(sa.select(Event.event_type).distinct()))
        db.session.remove()
    assert recorded == {
        "user.created",
        "user.updated",
        "user.deleted",
        "post.created",
        "post.updated",
        "post.deleted",
    }
    assert recorded <= set(EVENT_HANDLERS)
    assert all(EVENT_HANDLERS[kind] for kind in recorded)
