"""Dependencies failing fast, at the HTTP level and without servers to kill (both backends).

A Redis that refuses connections, or one that accepts them and never answers, must cost a request
at most one short timeout before the breakers and fallbacks take over; a database that cannot be
reached, or a SQLite file locked by another writer, gives 503 SERVICE_UNAVAILABLE with
Retry-After, never a 500. The system drills with real servers stopped under load are
tests/system/test_resilience_redis.py and tests/system/test_resilience_database.py.
"""

from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pybreaker
import pytest
import redis
from flask import Flask
from sqlalchemy import exc as sa_exc

from app import create_app
from app.auth.blocklist import TokenBlocklist
from app.core.errors import database_unavailable
from app.core.publishing import enqueue
from app.core.redis_client import redis_budget
from app.extensions import db
from tests.factories import PASSWORD, UNKNOWN_ID, unique
from tests.support.assertions import assert_error
from tests.support.backends import test_config
from tests.support.live import free_port, percentile


@pytest.fixture(params=["refusing", "silent"])
def dead_redis_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A Redis URL nobody answers on: nothing listening, or a socket that accepts connections
    (the kernel completes the handshake) and never replies, as a hung server does."""
    # Celery prefers these environment variables to the broker URL it is given.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    if request.param == "refusing":
        yield f"redis://127.0.0.1:{free_port()}/0"
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(512)
        yield f"redis://127.0.0.1:{silent.getsockname()[1]}/0"


def test_a_dead_redis_costs_requests_no_error_and_no_stall(app: Flask, dead_redis_url: str) -> None:
    """Cache, blocklist, limiter storage and broker all on a Redis that does not answer."""
    dead = create_app(
        test_config(
            app.config["SQLALCHEMY_DATABASE_URI"],
            REDIS_URL=dead_redis_url,
            RATELIMIT_ENABLED=True,
            RATELIMIT_STORAGE_URI=dead_redis_url,
            CELERY_BROKER_URL=dead_redis_url,
            CELERY_RESULT_BACKEND=dead_redis_url,
            TASKS_ENABLED=True,
        )
    )
    client = dead.test_client()
    name = unique()
    started = time.monotonic()
    created = client.post(
        "/api/users",
        json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
    )
    assert created.status_code == 201, created.json
    token = client.post(
        "/api/auth/login", json={"email": f"{name}@example.com", "password": PASSWORD}
    ).json["data"]["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    user_id = created.json["data"]["id"]
    # The first calls pay one short timeout each until the breakers open.
    assert time.monotonic() - started < 5.0

    latencies = []
    for n in range(35):
        began = time.monotonic()
        if n % 3 == 0:
            response = client.patch(f"/api/users/{user_id}", json={"bio": f"b{n}"}, headers=headers)
        else:
            response = client.get(f"/api/users/{user_id}", headers=headers if n % 2 else None)
        latencies.append(time.monotonic() - began)
        assert response.status_code == 200, response.json
        assert "X-RateLimit-Limit" in response.headers  # the in-memory fallback still limits
    assert client.get(f"/api/users/{user_id}").json["data"]["bio"] == "b33"
    shown = [f"{x:.3f}" for x in latencies]
    # Until each breaker has seen its few failures a request pays a timeout per Redis call (a
    # silent Redis: 0.25 s each; a write makes several: limiter, blocklist, cache, publish);
    # with redis-py's default retries one call alone takes seconds.
    assert sum(latencies[:5]) < 3.0, shown
    assert percentile(latencies[5:], 0.99) < 0.25, shown

    began = time.monotonic()
    health = client.get("/health")
    assert time.monotonic() - began < 1.0
    assert health.status_code == 200
    assert health.json["status"] == "degraded"
    assert health.json["checks"]["cache"] != "connected"


def test_publishing_to_a_dead_broker_gives_up_within_a_second(
    app: Flask, dead_redis_url: str
) -> None:
    dead = create_app(
        test_config(
            app.config["SQLALCHEMY_DATABASE_URI"],
            CELERY_BROKER_URL=dead_redis_url,
            CELERY_RESULT_BACKEND=dead_redis_url,
            TASKS_ENABLED=True,
        )
    )
    with dead.app_context():
        began = time.monotonic()
        assert enqueue("cache.warm") is False
        assert time.monotonic() - began < 1.5


def test_the_blocklist_answers_from_the_database_once_its_breaker_opens(
    app: Flask, dead_redis_url: str
) -> None:
    client = redis.Redis.from_url(dead_redis_url, **redis_budget({}))
    breaker = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60)
    revoked, live = str(uuid.uuid4()), str(uuid.uuid4())
    with app.app_context():
        blocklist = TokenBlocklist(db.session(), client, breaker)
        blocklist.revoke(revoked, datetime.now(UTC) + timedelta(hours=1))
        db.session.commit()
        for _ in range(2):  # the failures that open the breaker
            assert blocklist.is_revoked(revoked)
        assert breaker.current_state == "open"
        began = time.monotonic()
        for _ in range(20):
            assert blocklist.is_revoked(revoked)
            assert not blocklist.is_revoked(live)
        assert time.monotonic() - began < 0.5  # no Redis call: a timeout each would be 10 s
        db.session.remove()


@pytest.fixture
def unreachable_database_app() -> Flask:
    """An app whose PostgreSQL refuses every connection (nothing listens on its port)."""
    return create_app(
        test_config(
            f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere",
            REDIS_URL=None,
            CACHE_ENABLED=False,
        )
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/api/users/{UNKNOWN_ID}", None),
        ("GET", "/api/posts", None),
        (
            "POST",
            "/api/users",
            {"email": "x@example.com", "username": "xyz1", "password": PASSWORD},
        ),
        ("POST", "/api/auth/login", {"email": "x@example.com", "password": PASSWORD}),
    ],
)
def test_an_unreachable_database_is_503_with_retry_after(
    unreachable_database_app: Flask, method: str, path: str, body: Any
) -> None:
    response = unreachable_database_app.test_client().open(path, method=method, json=body)

    assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert int(response.headers["Retry-After"]) > 0


def test_health_is_unhealthy_when_the_database_is_unreachable(
    unreachable_database_app: Flask,
) -> None:
    response = unreachable_database_app.test_client().get("/health")

    assert response.status_code == 503
    assert response.json["status"] == "unhealthy"


def test_a_locked_sqlite_database_is_503_then_serves_again(tmp_path: Path) -> None:
    from flask_migrate import upgrade

    path = tmp_path / "locked.sqlite3"
    locked = create_app(
        test_config(
            f"sqlite:///{path}",
            REDIS_URL=None,
            CACHE_ENABLED=False,
            SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.2}},
        )
    )
    with locked.app_context():
        upgrade()
    client = locked.test_client()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past the busy timeout
    try:
        response = client.post(
            "/api/users",
            json={"email": "l@example.com", "username": "locked1", "password": PASSWORD},
        )
        assert_error(response, 503, "SERVICE_UNAVAILABLE")
        assert int(response.headers["Retry-After"]) > 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    response = client.post(
        "/api/users", json={"email": "l@example.com", "username": "locked1", "password": PASSWORD}
    )
    assert response.status_code == 201, response.json


def _wrapped(error_class: type[sa_exc.DBAPIError], original: Exception) -> sa_exc.DBAPIError:
    return error_class("SELECT 1", {}, original)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (sa_exc.InvalidatePoolError(), True),
        (sa_exc.TimeoutError("QueuePool limit reached"), True),
        (_wrapped(sa_exc.OperationalError, psycopg.OperationalError("refused")), True),
        (_wrapped(sa_exc.OperationalError, psycopg.errors.AdminShutdown()), True),
        (_wrapped(sa_exc.InterfaceError, psycopg.InterfaceError("closed")), True),
        (psycopg.OperationalError("connection failed"), True),
        (_wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")), True),
        # Bugs stay 500s: a missing table, a broken constraint, bad SQL.
        (_wrapped(sa_exc.OperationalError, sqlite3.OperationalError("no such table: x")), False),
        (_wrapped(sa_exc.ProgrammingError, psycopg.errors.UndefinedTable()), False),
        (_wrapped(sa_exc.IntegrityError, psycopg.errors.UniqueViolation()), False),
        (ValueError("not a database error"), False),
    ],
)
def test_which_errors_mean_the_database_is_unavailable(
    error: BaseException, unavailable: bool
) -> None:
    assert database_unavailable(error) is unavailable
