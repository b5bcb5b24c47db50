"""Logs of real processes: one JSON object per line from gunicorn and a Celery worker, plain text
on stderr from the `flask` CLI, and never a secret (contract §7). The formatter on its own is in
tests/unit/test_log_format.py, the API in process in tests/api/test_logging.py.

The request id travelling from a web request into the Celery task it caused, and appearing in
that task's log lines, is covered with a real worker in tests/system/test_cache_workers.py
(`test_a_write_is_written_through_by_the_worker_with_its_request_id`); here a worker's task
lines are checked for their task fields and for secrets in a task's arguments and result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask

from app import create_app
from app.core.context import request_id_var
from tests.factories import WRONG_KEY, bearer, unique
from tests.support.backends import REDIS_URL, test_config
from tests.support.live import live_server
from tests.support.logs import REQUIRED, assert_absent, parse_lines, secret, token_parts
from tests.support.paths import ROOT

FLASK = (sys.executable, "-m", "flask", "--app", "wsgi")
# Real processes: gunicorn, a Celery worker, the CLI -------------------------------------------


def test_gunicorn_writes_only_json_lines_and_no_secret(app: Flask, tmp_path: Path) -> None:
    """Master and workers alike (gunicorn.conf.py's logconfig_dict); stdout and stderr both."""
    secrets = {"password": secret("pw"), "query_token": secret("qt")}
    name = unique()
    request_id = f"req-gunicorn-{uuid.uuid4().hex[:8]}"
    with live_server(app, tmp_path) as (http, proc):
        status, _, _ = http.call(
            "POST",
            "/api/users",
            {"email": f"{name}@example.com", "username": name, "password": secrets["password"]},
            {"X-Request-ID": request_id},
        )
        assert status == 201
        status, _, body = http.call(
            "POST",
            "/api/auth/login",
            {"email": f"{name}@example.com", "password": secrets["password"]},
        )
        assert status == 200
        access = body["data"]["access_token"]
        secrets |= {f"access_{k}": v for k, v in token_parts(access).items()}
        assert http.call("GET", "/api/me", headers=bearer(access))[0] == 200
        assert http.call("GET", f"/api/posts?token={secrets['query_token']}")[0] < 500
        forged = jwt.encode({"sub": "x"}, WRONG_KEY, algorithm="HS256")
        secrets |= {f"forged_{k}": v for k, v in token_parts(forged).items()}
        assert http.call("GET", "/api/me", headers=bearer(forged))[0] == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=35) == 0
    out = (tmp_path / "gunicorn.log").read_text()
    assert_absent(out, secrets)
    lines = parse_lines(out)
    gunicorn_events = [line["event"] for line in lines if line["logger"] == "gunicorn.error"]
    assert any(event.startswith("Booting worker") for event in gunicorn_events), out[-3000:]
    assert any(event.startswith("Shutting down") for event in gunicorn_events), out[-3000:]
    created = [
        line
        for line in lines
        if line["logger"] == "app.access" and line.get("request_id") == request_id
    ]
    assert [(line["method"], line["route"], line["status"]) for line in created] == [
        ("POST", "/api/users", 201)
    ]


@pytest.fixture
def worker_env(app: Flask, tmp_path: Path) -> Iterator[Any]:
    from tests.support.workers import Worker, broker_settings

    broker = broker_settings(tmp_path)
    worker = Worker(app, tmp_path, broker).start("--pool=prefork", "--concurrency=1")
    try:
        yield worker, broker
    finally:
        worker.stop()


def test_task_lines_carry_request_id_task_name_and_id_and_no_secret(
    worker_env, database_uri: str
) -> None:
    from tests.support.workers import wait_for
    from worker import make_celery

    worker, broker = worker_env
    celery = make_celery(create_app(test_config(database_uri, **broker)))
    # A JWT-shaped argument: it is in the task's arguments and in its result.
    argument = jwt.encode({"sub": secret("sub")}, WRONG_KEY, algorithm="HS256")
    request_id = f"req-task-{uuid.uuid4().hex[:8]}"
    token = request_id_var.set(request_id)
    try:
        result = celery.send_task("worker.sleep", args=[0, argument])
    finally:
        request_id_var.reset(token)
    assert result.get(timeout=60)["token"] == argument

    def task_lines() -> list[dict[str, Any]]:
        return [line for line in worker.lines() if line.get("task_id") == result.id]

    lines = wait_for("the task's log lines", task_lines)
    succeeded = [line for line in lines if "succeeded" in line["event"]]
    assert succeeded, lines
    for line in lines:
        assert line["request_id"] == request_id
        assert line["task_name"] == "worker.sleep"
        for field in REQUIRED:
            assert field in line
    assert_absent(worker.log(), token_parts(argument))


def test_cli_logs_plain_text_on_stderr_and_never_echoes_a_password(
    app: Flask, tmp_path: Path
) -> None:
    """An operator's terminal: the command's output on stdout, log lines as plain text on
    stderr (JSON lines are for the web and the worker), no password on either."""
    password = secret("cli-pw")
    env = {
        **os.environ,
        "APP_ENV": "development",  # the CLI as operators run it (testing leaves logging alone)
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "INSTANCE_PATH": str(tmp_path),
        "CACHE_DIR": str(tmp_path / "cache"),
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        "TASKS_ENABLED": "false",
    }
    name = unique()
    created = subprocess.run(
        [
            *FLASK,
            "users",
            "create",
            f"{name}@example.com",
            *("--username", name, "--password", password),
        ],
        cwd=ROOT,
        env={**env, "REDIS_URL": REDIS_URL or ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created user {name} <{name}@example.com>")
    assert password not in created.stdout + created.stderr
    # A Redis nobody listens on: the cache logs its warning, as a plain line on stderr.
    stats = subprocess.run(
        [*FLASK, "cache", "stats"],
        cwd=ROOT,
        env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith("hits "), stats.stdout  # the command's answer, alone
    warning = [line for line in stats.stderr.splitlines() if "cache_unavailable" in line]
    assert warning, stats.stderr
    assert " WARNING app.core.cache: cache_unavailable" in warning[0]
    assert not any(
        line.startswith("{") for line in stats.stdout.splitlines() + stats.stderr.splitlines()
    )
