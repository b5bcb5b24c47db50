"""A Celery worker in its own process, the broker settings for it, and waiting for what it does.

Broker: the one the app's settings resolve (CELERY_BROKER_URL, else REDIS_URL: Redis in CI), else
the embedded SQLite broker in a temporary directory. Workers run with APP_ENV=development so they
log JSON lines carrying the request id, as in production (the testing environment keeps Celery's
plain log format).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app.settings import Settings
from tests.support.backends import CACHE_DIR, REDIS_URL
from tests.support.paths import ROOT

SLEEP_PREFIX = "postboard:test:sleep"


def broker_settings(directory: Path) -> dict[str, str]:
    """The broker and result backend the app would use, as its settings resolve them
    (CELERY_BROKER_URL, else REDIS_URL, else SQLite files), the SQLite ones in `directory`."""
    resolved = Settings.from_env("testing", INSTANCE_PATH=str(directory))
    return {
        "CELERY_BROKER_URL": resolved.celery_broker_url,
        "CELERY_RESULT_BACKEND": resolved.celery_result_backend,
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


class Worker:
    """`celery -A worker worker` in its own process group (so kill -9 takes its children too)."""

    def __init__(self, app: Flask, directory: Path, broker: dict[str, str], **env: str) -> None:
        self.name = f"cache-{uuid.uuid4().hex[:8]}@%h"
        self.directory = directory
        self.log_path = directory / f"worker-{self.name.split('@')[0]}.log"
        self.env = {
            **os.environ,
            **broker,
            "APP_ENV": "development",
            "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "REDIS_URL": REDIS_URL or "",
            "CACHE_DIR": CACHE_DIR,
            "INSTANCE_PATH": str(directory),
            "TASKS_ENABLED": "false",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen | None = None

    def start(self, *options: str) -> Worker:
        args = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", self.name]
        args += ["--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [*args, *options],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while " ready." not in self.log() and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            time.sleep(0.1)
        assert " ready." in self.log(), self.log()[-3000:]
        return self

    @property
    def nodename(self) -> str:
        return self.name.replace("%h", os.uname().nodename)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    parsed.append(json.loads(line))
        return parsed

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # whatever is left of its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def sleep_marks(token: str) -> tuple[int, str | None]:
    """(runs started, the worker that completed it) as worker.sleep recorded them."""
    key = f"{SLEEP_PREFIX}:{token}"
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            runs, done = client.get(f"{key}:runs"), client.get(key)
        finally:
            client.close()
        return int(runs or 0), done.decode() if done else None
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        return int(disk.get(f"{key}:runs") or 0), disk.get(key)


REDIS_SEP = "\x06\x16"


def forget_queue(broker_url: str, queue: str) -> None:
    """Remove a test queue from a Redis broker: its lists and kombu's bindings for it."""
    if not broker_url.startswith("redis"):
        return
    client = redis.Redis.from_url(broker_url)
    try:
        keys = [queue, *(f"{queue}{REDIS_SEP}{step}" for step in (3, 6, 9))]
        keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        client.delete(*keys)
        client.zrem("_kombu.binding_deadlines", queue)
    finally:
        client.close()


def sigterm_mid_task(
    celery: Any, worker: Worker, second: Worker, queue: str, options: tuple[str, ...]
) -> str:
    """The warm-shutdown drill (contract §7), on whatever broker `celery` and the workers use: a
    task running when its worker gets SIGTERM finishes there, the worker exits 0, and nothing is
    left to run again (`second`, started on the queue, runs a ping queued after anything left
    while the task's run count stays one). Returns the task's id for the broker's own checks."""
    token = uuid.uuid4().hex
    result = celery.send_task("worker.sleep", args=[4, token], queue=queue)
    wait_for("the task to start", lambda: sleep_marks(token)[0] == 1, timeout=60)
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    log = worker.log()
    assert "Warm shutdown" in log
    assert f"[{result.id}] succeeded" in log
    done = {"token": token, "run": 1, "first": True, "done_by": worker.nodename}
    assert result.get(timeout=10) == done
    second.start(*options)
    assert celery.send_task("worker.ping", queue=queue).get(timeout=60)["status"] == "pong"
    assert sleep_marks(token) == (1, worker.nodename)
    return str(result.id)
