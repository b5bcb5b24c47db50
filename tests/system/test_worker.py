"""A real Celery worker process consumes the configured broker: the embedded SQLite broker by
default, Redis when CELERY_BROKER_URL (or else REDIS_URL) names it. The request id travels with
the task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from app import create_app
from app.core.context import request_id_var
from tests.support.backends import REDIS_URL, test_config
from tests.support.paths import ROOT
from tests.support.workers import broker_settings


@pytest.fixture
def broker(tmp_path: Path) -> dict[str, str]:
    return broker_settings(tmp_path)


@pytest.fixture
def worker_process(app, broker: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen]:
    env = {
        **os.environ,
        **broker,
        "APP_ENV": "testing",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": REDIS_URL or "",
        "INSTANCE_PATH": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log_path = tmp_path / "worker.log"
    deadline = time.monotonic() + 60
    # Signals sent before the worker installs its handlers would kill it outright: wait for it.
    while "ready." not in log_path.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.2)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "worker.log").read_text()[-3000:])


def test_worker_consumes_broker_and_keeps_request_id(app, broker, worker_process) -> None:
    from worker import make_celery

    producer_app = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **broker))
    celery: Celery = make_celery(producer_app)
    token = request_id_var.set("req-worker-test-1")
    try:
        result = celery.send_task("worker.ping")
    finally:
        request_id_var.reset(token)
    deadline = time.monotonic() + 60
    while not result.ready() and time.monotonic() < deadline:
        assert worker_process.poll() is None, "worker died"
        time.sleep(0.2)
    assert result.ready(), "no worker consumed the task within 60 s"
    assert result.get(timeout=5) == {"status": "pong", "request_id": "req-worker-test-1"}


def test_worker_stops_cleanly_on_sigterm(worker_process) -> None:
    assert worker_process.poll() is None
    worker_process.send_signal(signal.SIGTERM)
    assert worker_process.wait(timeout=30) == 0


# The one Celery app, its task base and the worker's lean app --------------------------------


def test_a_worker_builds_only_what_it_uses(database_uri) -> None:
    from app.extensions import celery

    worker_app = create_app(test_config(database_uri), role="worker")
    assert worker_app.blueprints == {}  # no routes, hence no Swagger UI either
    assert set(worker_app.view_functions) == {"static"}
    assert not worker_app.before_request_funcs
    assert not worker_app.after_request_funcs
    assert not {"limiter", "compress", "cors", "flask-smorest"} & set(worker_app.extensions)
    assert worker_app.extensions["celery"] is celery
    assert celery.flask_app is worker_app
    # Beat entries are declared beside their tasks, with intervals from the app's settings.
    import worker.tasks  # noqa: F401  # the task modules declare them

    schedule = {e["task"] for e in celery.conf.beat_schedule.values()}
    assert {
        "auth.purge_revoked_tokens",
        "auth.resync_blocklist",
        "cache.warm",
        "idempotency.purge_expired_keys",
    } <= schedule


def test_a_task_runs_in_its_app_context_and_its_session_is_removed(database_uri, monkeypatch):
    from worker import make_celery
    from worker.tasks.health import ping

    worker_app = create_app(test_config(database_uri), role="worker")
    make_celery(worker_app)
    removed: list[bool] = []
    session = worker_app.extensions["sqlalchemy"].session
    monkeypatch.setattr(session, "remove", lambda: removed.append(True))
    # Outside any app context: the task base pushes the worker app's own (the query needs it).
    assert ping.apply().get(timeout=10)["status"] == "pong"
    assert removed, "the task base removes the task's session"


@pytest.mark.parametrize(
    "dead",
    # The discard port: nothing listens.
    ["redis://127.0.0.1:9/0", "amqp://guest:guest@127.0.0.1:9//"],
    ids=["redis", "rabbitmq"],
)
def test_a_write_answers_quickly_when_the_broker_is_unreachable(
    app, caplog, monkeypatch, dead: str
) -> None:
    """Publishing the write-through is bounded: a dead broker costs well under a second or
    two, is logged, and never fails the reply (the tombstone keeps reads correct)."""
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)  # Celery would prefer them to its settings
    backend = "redis://127.0.0.1:9/0"
    settings = {"TASKS_ENABLED": True, "CELERY_BROKER_URL": dead, "CELERY_RESULT_BACKEND": backend}
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    web = create_app(test_config(uri, **settings)).test_client()
    user = web.post(
        "/api/users",
        json={"email": "dead-broker@example.com", "username": "dead_broker", "password": "x" * 12},
    )
    assert user.status_code == 201, user.json
    started = time.monotonic()
    tokens = web.post(
        "/api/auth/login", json={"email": "dead-broker@example.com", "password": "x" * 12}
    ).json["data"]
    patched = web.patch(
        f"/api/users/{user.json['data']['id']}",
        json={"bio": "written anyway"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert patched.status_code == 200, patched.json
    assert time.monotonic() - started < 3
    published = [r for r in caplog.records if r.getMessage().startswith("task_publish_")]
    assert published, "the write tried to publish its write-through"
    assert {getattr(r, "task", None) for r in published} == {"cache.refresh_user"}
    assert web.get(f"/api/users/{user.json['data']['id']}").json["data"]["bio"] == "written anyway"
