"""Graceful shutdown for real (contract §7): gunicorn and a Celery worker, each sent SIGTERM
while it is busy.

gunicorn (3 workers, gunicorn.conf.py): requests in flight when SIGTERM arrives all complete
with a 2xx, a connection made after it is never served, the master exits 0 within the
graceful timeout, and the database and Redis connections of its workers are closed, not
dropped. The slow requests are real ones: registrations and a login with an expensive argon2
setting (ARGON2_TIME_COST), so no test-only endpoint exists.

Celery (prefork, as in the Procfile): a task running when SIGTERM arrives finishes (warm
shutdown), its result is recorded once, the worker exits 0, and nothing is left to redo. On
the broker the environment names (Redis in CI), else the embedded SQLite broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.error
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.extensions import db
from app.users.models import User
from tests.factories import unique
from tests.support.backends import ON_POSTGRES, REDIS_URL, test_config
from tests.support.live import Http, live_server
from tests.support.workers import (
    Worker,
    broker_settings,
    sigterm_mid_task,
    wait_for,
)

# One argon2 hash costs about two seconds at this setting (0.8 s per 1000 on an idle core of
# the build machine): long enough to be in flight when SIGTERM is sent.
SLOW_ARGON2 = {"ARGON2_TIME_COST": "2000", "ARGON2_MEMORY_COST_KIB": "1024"}
GRACEFUL_TIMEOUT = 20
SLOW_CALL_TIMEOUT = 60  # a slow hash on a loaded 2-core machine: seconds, never this many
WORKERS = 3


# Which gunicorn worker holds an accepted connection: read from /proc, so "in flight" is a fact
# the test checks, not a guess from timing. ---------------------------------------------------


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def _established_inodes(port: int) -> set[str]:
    """Socket inodes of established connections whose local port is `port` (server side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    return inodes


def connections_per_worker(master: int, port: int) -> dict[int, int]:
    """{worker pid: accepted client connections it holds}."""
    established = _established_inodes(port)
    held: dict[int, int] = {}
    for pid in _children(master):
        count = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in established:
                        count += 1
        held[pid] = count
    return held


def port_of(http: Http) -> int:
    return int(http.base.rsplit(":", 1)[1])


def _timed(call: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    def run() -> tuple[Any, float]:
        outcome = call()
        return outcome, time.monotonic()

    return run


# gunicorn ---------------------------------------------------------------------------------------


# A timing drill (slow hashes must finish inside the graceful window): make test runs it alone.
@pytest.mark.serial
def test_sigterm_completes_in_flight_requests_refuses_new_ones_and_exits_zero(
    app: Flask, tmp_path: Path
) -> None:
    settings = {
        **SLOW_ARGON2,
        "WEB_CONCURRENCY": str(WORKERS),
        "GUNICORN_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
    }
    with live_server(app, tmp_path, **settings) as (http, proc):
        port = port_of(http)
        wait_for(
            f"{WORKERS} gunicorn workers", lambda: len(_children(proc.pid)) == WORKERS, timeout=60
        )
        # A user to log in as (one slow registration, which may also wait for its worker to
        # finish booting: each builds the app, a slow dummy hash included, on 2 shared cores).
        known = unique()
        password = "shutdown password"
        body = {"email": f"{known}@example.com", "username": known, "password": password}
        status, _, _ = http.call("POST", "/api/users", body, timeout=SLOW_CALL_TIMEOUT)
        assert status == 201

        # A bounded stream of quick requests, several at a time: all served.
        quick = ["/health", "/api/posts?per_page=5", "/api/users?per_page=5", "/ready"] * 6
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            statuses = list(pool.map(lambda path: http.call("GET", path)[0], quick))
        assert all(200 <= status < 300 for status in statuses), statuses

        # One slow request per worker: two registrations and a login.
        names = [unique(), unique()]
        slow_calls = [
            lambda name=name: http.call(
                "POST",
                "/api/users",
                {"email": f"{name}@example.com", "username": name, "password": password},
                timeout=SLOW_CALL_TIMEOUT,
            )
            for name in names
        ] + [
            lambda: http.call(
                "POST",
                "/api/auth/login",
                {"email": f"{known}@example.com", "password": password},
                timeout=SLOW_CALL_TIMEOUT,
            )
        ]
        pool = ThreadPoolExecutor(max_workers=len(slow_calls) + 1)
        try:
            slow: list[Future] = [pool.submit(_timed(call)) for call in slow_calls]
            wait_for(
                "each worker to hold one of the slow requests",
                lambda: sorted(connections_per_worker(proc.pid, port).values()) == [1] * WORKERS,
                timeout=30,
            )
            assert not any(future.done() for future in slow)

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            late: Future = pool.submit(lambda: http.call("GET", "/health"))

            assert proc.wait(timeout=GRACEFUL_TIMEOUT + 10) == 0
            stopped = time.monotonic()
            outcomes = [future.result(timeout=10) for future in slow]
            # Refused, reset or left unanswered: never served.
            with pytest.raises((urllib.error.URLError, ConnectionError, TimeoutError)):
                late.result(timeout=20)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    assert stopped - signalled < GRACEFUL_TIMEOUT
    statuses = [response[0] for response, _ in outcomes]
    assert statuses == [201, 201, 200], outcomes
    for _, finished in outcomes:
        assert finished > signalled, "a slow request finished before SIGTERM: nothing was in flight"
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Handling signal: term" in log
    # What was in flight was done, not just answered: both registrations are in the database.
    with app.app_context():
        stored = db.session.scalars(sa.select(User.username).where(User.username.in_(names)))
        assert sorted(stored) == sorted(names)
        db.session.remove()


def _pg_connections(application_name: str) -> int:
    engine = sa.create_engine(os.environ["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                {"n": application_name},
            ).scalar_one()
    finally:
        engine.dispose()


def _pg_sessions_abandoned() -> int:
    """PostgreSQL's count of sessions whose client vanished without closing the connection."""
    engine = sa.create_engine(os.environ["DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT sessions_abandoned FROM pg_stat_database"
                    " WHERE datname = current_database()"
                )
            ).scalar_one()
    finally:
        engine.dispose()


def _redis_clients(client_name: str) -> int:
    assert REDIS_URL
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for entry in client.client_list() if entry.get("name") == client_name)
    finally:
        client.close()


def _with_query(url: str, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.mark.skipif(
    not (ON_POSTGRES or REDIS_URL),
    reason="needs PostgreSQL (DATABASE_URL) or Redis (REDIS_URL): the embedded default has no "
    "connection pool a server could see",
)
def test_sigterm_closes_the_workers_database_and_redis_connections(
    app: Flask, tmp_path: Path
) -> None:
    name = f"postboard-shutdown-{uuid.uuid4().hex[:8]}"
    settings = {"WEB_CONCURRENCY": str(WORKERS)}
    if ON_POSTGRES:
        settings["DATABASE_URL"] = _with_query(
            app.config["SQLALCHEMY_DATABASE_URI"], application_name=name
        )
        abandoned_before = _pg_sessions_abandoned()
    if REDIS_URL:
        settings["REDIS_URL"] = _with_query(REDIS_URL, client_name=name)

    with live_server(app, tmp_path, **settings) as (http, proc):
        user = unique()
        body = {"email": f"{user}@example.com", "username": user, "password": "pool password"}
        status, _, created = http.call("POST", "/api/users", body)
        assert status == 201
        user_id = created["data"]["id"]
        login = {"email": f"{user}@example.com", "password": "pool password"}
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(
                pool.map(lambda _: http.call("POST", "/api/auth/login", login), range(9))
            )
        assert all(status == 200 for status, _, _ in results)
        for _ in range(6):
            assert http.call("GET", f"/api/users/{user_id}")[0] == 200
        # The workers hold pooled connections now: what the check after exit must find gone.
        if ON_POSTGRES:
            assert _pg_connections(name) >= 1
        if REDIS_URL:
            assert _redis_clients(name) >= 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0

    if ON_POSTGRES:
        wait_for("PostgreSQL to see the connections closed", lambda: _pg_connections(name) == 0)
        # Closed by the client (a Terminate message), not dropped with a killed process.
        assert _pg_sessions_abandoned() == abandoned_before
    if REDIS_URL:
        wait_for("Redis to see the connections closed", lambda: _redis_clients(name) == 0)


# Celery -----------------------------------------------------------------------------------------


def test_sigterm_mid_task_finishes_it_exits_zero_and_loses_nothing(
    app: Flask, database_uri: str, tmp_path: Path
) -> None:
    broker = broker_settings(tmp_path)
    queue = f"test-shutdown-{uuid.uuid4().hex[:8]}"  # only this test's workers consume it
    options = ("--pool=prefork", "--concurrency=1", "-Q", queue)
    celery = _celery(create_app(test_config(database_uri, **broker)))
    worker = Worker(app, tmp_path, broker).start(*options)
    second = Worker(app, tmp_path, broker)
    try:
        task_id = sigterm_mid_task(celery, worker, second, queue, options)
        if broker["CELERY_BROKER_URL"].startswith("redis"):
            client = redis.Redis.from_url(broker["CELERY_BROKER_URL"])
            try:
                assert client.llen(queue) == 0
                unacked = client.hvals("unacked")
                assert not any(task_id.encode() in value for value in unacked)
            finally:
                client.close()
    finally:
        worker.stop()
        second.stop()
        if broker["CELERY_BROKER_URL"].startswith("redis"):
            client = redis.Redis.from_url(broker["CELERY_BROKER_URL"])
            client.delete(queue)
            client.close()


def _celery(flask_app: Flask) -> Any:
    from worker import make_celery

    return make_celery(flask_app)
