"""A real Celery worker process consumes the configured broker: the embedded SQLite broker by
default, Redis when CELERY_BROKER_URL names it. The request id travels with the task."""

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
from tests.conftest import REDIS_URL, test_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> dict[str, str]:
    broker_url = os.environ.get("CELERY_BROKER_URL")
    if broker_url:
        return {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": broker_url}
    return {
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "CELERY_RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.sqlite3'}",
    }


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
