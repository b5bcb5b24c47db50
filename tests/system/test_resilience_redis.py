"""System drill: a real redis-server dies under load and comes back (docs/operations-failures.md).

A private redis-server (its own port, killed and restarted by the test, never the shared one)
backs the cache, the blocklist, the rate limiter and the Celery broker of a real gunicorn on the
test PostgreSQL database. Client threads read and write while Redis is killed for a few seconds
and restarted from a snapshot taken just before (the worst case for coherence: it comes back
holding entries older than the writes made while it was away). Asserted: no 5xx; after the first
second of the outage p99 latency stays small; /health says degraded within a second; every
acknowledged write is in the database; no read is stale once the breakers have let Redis back
in; a logout acknowledged during the outage still holds once Redis is back.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from app.core.cache import Cache, RedisBackend, cache_key
from app.core.redis_client import redis_breaker, redis_budget, skip_redis
from app.extensions import db
from app.posts.models import Post
from tests.factories import PASSWORD, unique
from tests.support.backends import needs_postgres
from tests.support.live import Http, Recorder, free_port, live_server, percentile, run_clients

REDIS_SERVER = shutil.which("redis-server")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # a latency drill: make test runs it alone, after the parallel part
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary on PATH"),
]

# Generous for a loaded 2-core machine running the drill beside other work; the target
# (100 ms) is what the drill reports. An answer waiting out redis-py's default retries takes
# seconds, so the bound still fails when a client lacks its budget. A hung (paused) Redis costs
# more: each breaker's first failures and flask-limiter's periodic storage check wait out a
# socket timeout, and a sync worker's queued requests wait behind them.
OUTAGE_P99_BOUND = {"killed": 0.25, "paused": 1.0}
# /health answers degraded within this long of the outage (paused: its request may queue
# behind requests waiting out their timeouts in the two sync workers).
DEGRADED_WITHIN = {"killed": 1.0, "paused": 3.0}
OUTAGE_SECONDS = 5.0


class PrivateRedis:
    """A redis-server of this test's own: no automatic persistence, one explicit snapshot."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def url(self, number: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{number}"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("a")
        self.proc = subprocess.Popen(
            [
                *(str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.workdir), "--dbfilename", "drill.rdb"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("private redis-server did not start")
                time.sleep(0.05)
            except redis.BusyLoadingError:
                time.sleep(0.05)
        client.close()

    def snapshot_and_kill(self) -> None:
        """SAVE what Redis holds now, then SIGKILL it: a restart reloads that older state."""
        client = redis.Redis(port=self.port)
        client.save()
        client.close()
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing is ever answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


class Writer:
    """A user editing their own published post in a loop; remembers the last acknowledged title
    and every read that did not show the write just acknowledged."""

    def __init__(self, recorder: Recorder, http: Http) -> None:
        self.recorder = recorder
        name = unique("rw")
        status, _, body = http.call(
            "POST",
            "/api/users",
            {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        )
        assert status == 201, body
        self.user_id: str = body["data"]["id"]
        _, _, body = http.call(
            "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": PASSWORD}
        )
        self.headers = {"Authorization": f"Bearer {body['data']['access_token']}"}
        status, _, body = http.call(
            "POST",
            f"/api/users/{self.user_id}/posts",
            {"title": "start", "body": "drill", "status": "published"},
            self.headers,
        )
        assert status == 201, body
        self.post_id: str = body["data"]["id"]
        self.acked: list[tuple[float, str]] = []  # (when acknowledged, title)
        self.stale: list[tuple[float, str, str, str]] = []  # (when, how, expected, got)

    def loop(self, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            title = f"t{n}-{uuid.uuid4().hex[:6]}"
            status, _, _ = self.recorder.call(
                "write", "PATCH", f"/api/posts/{self.post_id}", {"title": title}, self.headers
            )
            if status != 200:
                continue
            self.acked.append((time.monotonic(), title))
            for how, headers in (("author", self.headers), ("anonymous", None)):
                status, _, body = self.recorder.call(
                    "read", "GET", f"/api/posts/{self.post_id}", headers=headers
                )
                if status == 200 and body["data"]["title"] != title:
                    self.stale.append((time.monotonic(), how, title, body["data"]["title"]))


def reader_loop(recorder: Recorder, writers: list[Writer]) -> Any:
    def loop(stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            writer = writers[i % len(writers)]
            i += 1
            recorder.call("read", "GET", f"/api/users/{writer.user_id}")
            recorder.call("read", "GET", f"/api/users/{writer.user_id}", headers=writer.headers)
            recorder.call("read", "GET", "/api/posts?per_page=5")

    return loop


def health_loop(recorder: Recorder) -> Any:
    def loop(stop: threading.Event) -> None:
        while not stop.is_set():
            recorder.call("health", "GET", "/health")
            time.sleep(0.05)

    return loop


@needs_postgres  # the drill of the PostgreSQL + Redis phase: served from PostgreSQL
@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_redis_outage_under_load_costs_no_error_no_stall_no_lost_or_stale_write(
    app: Flask, tmp_path: Path, private_redis: PrivateRedis, outage: str
) -> None:
    """`killed`: SIGKILL, restarted from a snapshot taken just before (connections refused);
    `paused`: SIGSTOP then SIGCONT (a hung server: every call waits out its socket timeout)."""
    env = {
        "REDIS_URL": private_redis.url(0),
        "CELERY_BROKER_URL": private_redis.url(1),
        "CELERY_RESULT_BACKEND": private_redis.url(1),
        "TASKS_ENABLED": "true",  # publish write-through tasks to the (dying) broker too
        "RATELIMIT_ENABLED": "true",  # the limiter on Redis, falling back to memory
        "RATELIMIT_ANONYMOUS": "100000/minute",
        "RATELIMIT_AUTHENTICATED": "100000/minute",
        "RATELIMIT_REGISTER": "1000/minute",
        "RATELIMIT_LOGIN": "1000/minute",
        "CACHE_BREAKER_RESET_SECONDS": "1",  # so the drill sees the cache come back
    }
    with live_server(app, tmp_path, **env) as (http, _proc):
        recorder = Recorder(http)
        writers = [Writer(recorder, http) for _ in range(2)]
        victim = Writer(recorder, http)  # logs out during the outage
        assert http.call("GET", "/api/me", headers=victim.headers)[0] == 200
        loops = [w.loop for w in writers]
        loops += [reader_loop(recorder, writers) for _ in range(2)]
        loops.append(health_loop(recorder))
        stop = threading.Event()
        threads = run_clients(loops, stop)
        try:
            time.sleep(2.0)  # warm: the cache fills
            down = time.monotonic()
            if outage == "killed":
                private_redis.snapshot_and_kill()
            else:
                private_redis.pause()
            time.sleep(2.0)
            # A logout acknowledged while Redis is down (its Redis mirror is owed).
            assert http.call("POST", "/api/auth/logout", headers=victim.headers)[0] == 204
            time.sleep(OUTAGE_SECONDS - 2.0)
            if outage == "killed":
                private_redis.start()  # back, holding the state from before the outage
            else:
                private_redis.resume()
            up = time.monotonic()
            time.sleep(6.5)  # every breaker resets (5 s), owed tombstones and mirrors are written
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=20)
        end = time.monotonic()
        status, _, body = http.call("GET", "/health")
        assert (status, body["status"]) == (200, "healthy"), body
        # Redis is trusted again, by both workers, and the logout still holds.
        refused = [http.call("GET", "/api/me", headers=victim.headers)[0] for _ in range(10)]
        assert refused == [401] * 10

        # Every acknowledged write is in the database, and served once Redis is back.
        with app.app_context():
            for writer in writers:
                stored = db.session.scalar(
                    sa.select(Post.title).where(Post.public_id == uuid.UUID(writer.post_id))
                )
                assert writer.acked
                assert stored == writer.acked[-1][1]
                _, _, got = http.call("GET", f"/api/posts/{writer.post_id}")
                assert got["data"]["title"] == stored
            db.session.remove()

    samples = recorder.between(0, end)
    failures = [(s.op, s.status, s.body) for s in samples if s.status == 0 or s.status >= 500]
    assert not failures, failures[:5]
    # A process whose breaker is still open after Redis is back owes the tombstone of a write
    # it acknowledged; until its breaker lets it write it (CACHE_BREAKER_RESET_SECONDS, 1 s
    # here) another process may serve the previous version. After that, never.
    settled = up + 1.0 + 1.0
    stale = [entry for writer in writers for entry in writer.stale]
    late = [(round(when - up, 2), *rest) for when, *rest in stale if when >= settled]
    print(f"\n{outage}: stale reads: {len(stale)} in all, {len(late)} after Redis back + 2 s")
    assert not late, late[:5]
    assert [s for s in recorder.between(settled, end) if s.op == "read"], "no read after settling"

    # Latency while Redis is dead, after its first second.
    served = [s for s in recorder.between(down + 1.0, up) if s.op != "health"]
    latencies = [s.seconds for s in served]
    assert len(served) >= 20, f"only {len(served)} requests during the outage"
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    writes = [s for s in served if s.op == "write" and s.status == 200]
    assert writes, "no write was acknowledged while Redis was down"
    print(
        f"\nredis {outage}: {len(served)} requests in {up - down - 1.0:.1f} s, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
        f"{len(writes)} writes acknowledged"
    )
    assert p99 < OUTAGE_P99_BOUND[outage], (p50, p99)

    # /health: degraded within a second of the kill, and never slow while Redis is dead.
    health = [s for s in recorder.between(down, up) if s.op == "health"]
    degraded = [s for s in health if s.body and s.body.get("status") == "degraded"]
    assert degraded, [(s.status, s.body) for s in health][:5]
    first = degraded[0].started + degraded[0].seconds - down
    print(
        f"health degraded {first * 1000:.0f} ms after the outage began; slowest probe "
        f"{max(s.seconds for s in health) * 1000:.0f} ms"
    )
    assert first < DEGRADED_WITHIN[outage]
    assert all(s.seconds < DEGRADED_WITHIN[outage] for s in health)


def test_owed_tombstones_reach_redis_without_another_request(private_redis: PrivateRedis) -> None:
    """A process that acknowledged a write while Redis was down writes the tombstone once Redis
    is back even if it serves nothing more (other processes read that entry meanwhile)."""
    client = redis.Redis.from_url(private_redis.url(0), **redis_budget({}))
    cache = Cache(
        RedisBackend(client),
        ttl=60,
        breaker=pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.5),
    )
    post_id = uuid.uuid4()
    cache.fill("post", post_id, 1, {"title": "old"})
    private_redis.snapshot_and_kill()  # the snapshot holds version 1
    cache.invalidate("post", [(post_id, 2)])  # the write's tombstone: owed
    assert cache.owes_writes
    private_redis.start()  # back with version 1, and nobody calls `cache` again

    deadline = time.monotonic() + 5
    while json.loads(client.get(cache_key("post", post_id)) or "{}").get("v") != 2:
        assert time.monotonic() < deadline, "the owed tombstone was never written"
        time.sleep(0.1)
    assert not cache.owes_writes


def test_an_open_breaker_is_closed_by_its_background_probe(private_redis: PrivateRedis) -> None:
    """While open, callers skip Redis; a PING every reset timeout closes it once Redis is back."""
    client = redis.Redis.from_url(private_redis.url(0), **redis_budget({}))
    breaker = redis_breaker(
        f"test@{uuid.uuid4()}",
        {"REDIS_BREAKER_FAIL_MAX": 1, "REDIS_BREAKER_RESET_SECONDS": 0.3},
        probe=client.ping,
    )
    private_redis.stop(signal.SIGKILL)
    with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
        client.ping()
    assert skip_redis(breaker)
    time.sleep(1.0)  # probes fail meanwhile, and reschedule themselves
    assert skip_redis(breaker)
    private_redis.start()

    deadline = time.monotonic() + 3
    while skip_redis(breaker):  # nobody calls through the breaker here
        assert time.monotonic() < deadline, "the probe never closed the breaker"
        time.sleep(0.05)
    assert breaker.current_state == "closed"
