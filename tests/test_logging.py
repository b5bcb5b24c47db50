"""Logs: one JSON object per line from web, worker and CLI, and never a secret (contract §7).

Redaction happens when a line is formatted, so every test here reads real output: the
production `configure_logging()` handler writing to stdout (captured by pytest), or a real
process's output (gunicorn, a Celery worker, the `flask` CLI), never only LogRecord objects.

The request id travelling from a web request into the Celery task it caused, and appearing in
that task's log lines, is covered with a real worker in tests/test_cache_workers.py
(`test_a_write_is_written_through_by_the_worker_with_its_request_id`); here a worker's task
lines are checked for their task fields and for secrets in a task's arguments and result.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.core.context import request_id_var
from app.core.logging import REDACTED, configure_logging
from tests.conftest import REDIS_URL, bearer, test_config, unique
from tests.live import ROOT, live_server

REQUIRED = ("timestamp", "level", "logger", "event")
ACCESS_FIELDS = ("request_id", "method", "path", "route", "status", "duration_ms")
WRONG_KEY = "not the key, but long enough for HS256 to take it"
FLASK = (sys.executable, "-m", "flask", "--app", "wsgi")
LIBRARY_LOGGERS = ("gunicorn.error", "gunicorn.access", "celery", "celery.task")


def secret(label: str) -> str:
    """A value unique enough that finding it in the output can only mean it leaked."""
    return f"{label}-{uuid.uuid4().hex}"


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON, each with the required fields and a UTC ISO timestamp."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        for field in REQUIRED:
            assert field in record, (field, line)
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() == timedelta(0), record["timestamp"]
        parsed.append(record)
    return parsed


def assert_absent(text: str, secrets: dict[str, str]) -> None:
    leaked = [label for label, value in secrets.items() if value and value in text]
    assert not leaked, f"secrets found in the log output: {leaked}"


def token_parts(token: str) -> dict[str, str]:
    """The token and its signature: neither may be logged (the header alone is public)."""
    parts = {"token": token}
    signature = token.rsplit(".", 1)[-1]
    if len(signature) >= 16:
        parts["signature"] = signature
    return parts


@pytest.fixture
def json_logs() -> Iterator[Callable[[], str]]:
    """The production logging set-up (`configure_logging`), its stdout handler writing into a
    buffer instead (pytest swaps sys.stdout between phases); undone afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_libraries = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in LIBRARY_LOGGERS
    }
    configure_logging("INFO")
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)

    def read() -> str:
        return buffer.getvalue()

    try:
        yield read
    finally:
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for name, (handlers, propagate) in saved_libraries.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).propagate = propagate
        logging.captureWarnings(False)
        structlog.reset_defaults()


# The formatter on its own: keys, nested values, messages, exceptions, structlog's loggers ------


def test_secret_keys_and_secret_looking_values_are_masked(json_logs) -> None:
    signed = jwt.encode({"sub": "someone"}, WRONG_KEY, algorithm="HS256")
    secrets = {
        "password": secret("pw"),
        "current_password": secret("cur"),
        "new_password": secret("new"),
        "api_key": secret("key"),
        "cookie": secret("cookie"),
        "refresh_token": secret("rt"),
        "client_secret": secret("cs"),
        "jwt": secret("jwt"),
        "opaque_bearer": secret("opaque"),
        "query_token": secret("qt"),
        "query_password": secret("qp"),
        "repr_password": secret("rp"),
        "repr_token": secret("rtk"),
        "exception_secret": secret("ex"),
        "structlog_password": secret("sp"),
        "structlog_token": secret("st"),
        **token_parts(signed),
    }
    log = logging.getLogger("tests.logging")
    log.info(
        "login attempt",
        extra={
            "password": secrets["password"],
            "Current-Password": secrets["current_password"],
            "NEW_PASSWORD": secrets["new_password"],
            "headers": {
                "Authorization": f"Bearer {signed}",
                "X-Api-Key": secrets["api_key"],
                "Cookie": f"session={secrets['cookie']}",
            },
            "items": [{"refresh_token": secrets["refresh_token"]}, {"note": f"got {signed}"}],
            "client_secret": secrets["client_secret"],
            "jwt": secrets["jwt"],
            "safe": "visible",
        },
    )
    log.warning(
        "header Authorization: Bearer %s, url /api/posts?token=%s&password=%s&page=2",
        secrets["opaque_bearer"],
        secrets["query_token"],
        secrets["query_password"],
    )
    log.info("settings %s", {"password": secrets["repr_password"], "token": secrets["repr_token"]})
    try:
        raise ValueError(f"bad secret={secrets['exception_secret']} in {signed}")
    except ValueError:
        log.exception("failed")
    structlog.get_logger("tests.structlog").info(
        "native", password=secrets["structlog_password"], token=secrets["structlog_token"], n=1
    )

    out = json_logs()
    assert_absent(out, secrets)
    extra, warning, settings, failure, native = parse_lines(out)
    assert extra["event"] == "login attempt"
    assert extra["password"] == extra["Current-Password"] == extra["NEW_PASSWORD"] == REDACTED
    assert extra["headers"] == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
        "Cookie": REDACTED,
    }
    assert extra["items"] == [{"refresh_token": REDACTED}, {"note": f"got {REDACTED}"}]
    assert extra["client_secret"] == extra["jwt"] == REDACTED
    assert extra["safe"] == "visible"  # only secrets go
    assert warning["level"] == "warning"
    assert f"Bearer {REDACTED}" in warning["event"]
    assert f"token={REDACTED}&password={REDACTED}&page=2" in warning["event"]
    assert REDACTED in settings["event"]
    assert failure["level"] == "error"
    assert "ValueError" in failure["exception"]
    assert native["logger"] == "tests.structlog"
    assert native["password"] == native["token"] == REDACTED
    assert native["n"] == 1


def test_lines_carry_the_request_id_of_the_request_or_task_being_served(json_logs) -> None:
    log = logging.getLogger("tests.logging")
    token = request_id_var.set("req-in-context")
    try:
        log.info("inside")
    finally:
        request_id_var.reset(token)
    log.info("outside")
    inside, outside = parse_lines(json_logs())
    assert inside["request_id"] == "req-in-context"
    assert "request_id" not in outside


# The API, in process, through the production handler -----------------------------------------


def test_no_password_token_or_secret_reaches_the_log(
    json_logs, app: Flask, client: FlaskClient
) -> None:
    secrets: dict[str, str] = {
        "SECRET_KEY": app.config["SECRET_KEY"],
        "JWT_SECRET_KEY": app.config["JWT_SECRET_KEY"],
    }
    name = unique()
    email = f"{name}@example.com"
    secrets["password"] = secret("pw")

    response = client.post(
        "/api/users", json={"email": email, "username": name, "password": secrets["password"]}
    )
    assert response.status_code == 201
    user_id = response.json["data"]["id"]

    # Secrets in unexpected places of a body, a form body, broken JSON.
    secrets |= {k: secret(k) for k in ("body_pw", "body_secret", "nested_pw", "nested_token")}
    response = client.post(
        "/api/users",
        json={
            "email": f"x{email}",
            "username": f"x{name}",
            "password": secrets["body_pw"],
            "secret": secrets["body_secret"],
            "profile": {"password": secrets["nested_pw"], "token": secrets["nested_token"]},
        },
    )
    assert response.status_code == 400
    secrets |= {"form_pw": secret("form"), "broken_json_pw": secret("broken")}
    response = client.post(
        "/api/users",
        data=f"password={secrets['form_pw']}&secret=x",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 415
    response = client.post(
        "/api/auth/login",
        data='{"email": "a@example.com", "password": "' + secrets["broken_json_pw"] + '"',
        content_type="application/json",
    )
    assert response.status_code == 400

    # Logins: a wrong password, then the right one.
    secrets["wrong_pw"] = secret("wrong")
    response = client.post(
        "/api/auth/login", json={"email": email, "password": secrets["wrong_pw"]}
    )
    assert response.status_code == 401
    tokens = client.post(
        "/api/auth/login", json={"email": email, "password": secrets["password"]}
    ).json["data"]
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    secrets |= {f"access_{k}": v for k, v in token_parts(access).items()}
    secrets |= {f"refresh_{k}": v for k, v in token_parts(refresh).items()}
    secrets["authorization_header"] = f"Bearer {access}"

    me_request_id = f"req-me-{uuid.uuid4().hex[:8]}"
    response = client.get("/api/me", headers={**bearer(access), "X-Request-ID": me_request_id})
    assert response.status_code == 200

    # A query string full of secrets.
    secrets |= {"query_token": secret("qt"), "query_pw": secret("qp"), "query_secret": secret("qs")}
    query = (
        f"token={secrets['query_token']}&password={secrets['query_pw']}"
        f"&secret={secrets['query_secret']}"
    )
    query_request_id = f"req-query-{uuid.uuid4().hex[:8]}"
    response = client.get(f"/api/posts?{query}", headers={"X-Request-ID": query_request_id})
    assert response.status_code < 500

    # Refresh (rotation), a password change with a wrong and then the right current password.
    rotated = client.post("/api/auth/refresh", headers=bearer(refresh)).json["data"]
    access2, refresh2 = rotated["access_token"], rotated["refresh_token"]
    secrets |= {f"access2_{k}": v for k, v in token_parts(access2).items()}
    secrets |= {f"refresh2_{k}": v for k, v in token_parts(refresh2).items()}
    secrets |= {"new_pw": secret("newpw"), "bad_current_pw": secret("badcur")}
    response = client.patch(
        f"/api/users/{user_id}",
        json={"password": secrets["new_pw"], "current_password": secrets["bad_current_pw"]},
        headers=bearer(access2),
    )
    assert 400 <= response.status_code < 500
    response = client.patch(
        f"/api/users/{user_id}",
        json={"password": secrets["new_pw"], "current_password": secrets["password"]},
        headers=bearer(access2),
    )
    assert response.status_code == 200, response.json

    # Forged, alg-none, expired and malformed tokens; Basic credentials; a refresh as access.
    claims = jwt.decode(access2, options={"verify_signature": False})
    now = datetime.now(UTC)
    forged = jwt.encode(claims, WRONG_KEY, algorithm="HS256")
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    expired = jwt.encode(
        {**claims, "iat": now - timedelta(hours=2), "exp": now - timedelta(hours=1)},
        app.config["JWT_SECRET_KEY"],
        algorithm="HS256",
    )
    malformed = secret("not-a-jwt")
    secrets |= {f"forged_{k}": v for k, v in token_parts(forged).items()}
    secrets |= {"unsigned": unsigned, "expired": expired, "malformed": malformed}
    secrets |= {f"expired_{k}": v for k, v in token_parts(expired).items()}
    for bad in (forged, unsigned, expired, malformed):
        assert client.get("/api/me", headers=bearer(bad)).status_code == 401
    basic = base64.b64encode(f"{email}:{secrets['password']}".encode()).decode()
    secrets["basic"] = basic
    assert client.get("/api/me", headers={"Authorization": f"Basic {basic}"}).status_code == 401
    assert client.post("/api/auth/refresh", headers=bearer(access2)).status_code == 401

    # Logout, then the logged-out token and the spent refresh token again.
    assert client.post("/api/auth/logout", headers=bearer(access2)).status_code == 204
    assert client.get("/api/me", headers=bearer(access2)).status_code == 401
    assert client.post("/api/auth/refresh", headers=bearer(refresh)).status_code == 401

    out = json_logs()
    assert_absent(out, secrets)
    lines = parse_lines(out)
    access_lines = [line for line in lines if line["logger"] == "app.access"]
    assert len(access_lines) == 20  # one per request above
    for line in access_lines:
        for field in ACCESS_FIELDS:
            assert field in line, (field, line)
        assert "?" not in line["path"]
        assert isinstance(line["status"], int)
        assert isinstance(line["duration_ms"], int | float)
    me_line = next(x for x in access_lines if x.get("client_request_id") == me_request_id)
    assert me_line["method"] == "GET"
    assert (me_line["path"], me_line["route"], me_line["status"]) == ("/api/me", "/api/me", 200)
    assert me_line.get("user_id") == user_id, "the access line names the authenticated user"
    query_line = next(x for x in access_lines if x.get("client_request_id") == query_request_id)
    assert query_line["path"] == "/api/posts"  # never the query string
    security = [line for line in lines if line["logger"] == "app.security"]
    assert {"login_failed", "revoked_token_used"} <= {line["event"] for line in security}
    for line in security:
        assert line.get("request_id"), line


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
        if line["logger"] == "app.access" and line.get("client_request_id") == request_id
    ]
    assert [(line["method"], line["route"], line["status"]) for line in created] == [
        ("POST", "/api/users", 201)
    ]


@pytest.fixture
def worker_env(app: Flask, tmp_path: Path) -> Iterator[Any]:
    from tests.test_cache_workers import Worker, broker_settings

    broker = broker_settings(tmp_path)
    worker = Worker(app, tmp_path, broker).start("--pool=prefork", "--concurrency=1")
    try:
        yield worker, broker
    finally:
        worker.stop()


def test_task_lines_carry_request_id_task_name_and_id_and_no_secret(
    worker_env, database_uri: str
) -> None:
    from tests.test_cache_workers import wait_for
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


def test_cli_logs_json_and_never_echoes_a_password(app: Flask, tmp_path: Path) -> None:
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
    assert password not in created.stdout + created.stderr
    # A Redis nobody listens on: the cache logs its warning, as a JSON line.
    stats = subprocess.run(
        [*FLASK, "cache", "stats"],
        cwd=ROOT,
        env={**env, "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stats.returncode == 0, stats.stderr
    log_lines = parse_lines(
        "\n".join(line for line in stats.stdout.splitlines() if line.startswith("{"))
    )
    assert any(line["event"] == "cache_unavailable" for line in log_lines), stats.stdout
    assert stats.stderr.strip() == "", stats.stderr
