"""The `flask` CLI as operators run it (a real `flask` process, FLASK_APP=wsgi), and what each
process imports at start (issue #14): a CLI call builds the light "cli" app and loads no web
machinery, Flask's own `routes` still gets the web app, `flask db` errors are one plain line on
stderr, and a fresh database migrates without a warning. How fast is a benchmark's business,
not a test's: these check what is loaded, which is what makes it fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

# Loaded by the web app only: none of it may be imported by a CLI call that does not need it.
WEB_ONLY = (
    "flask_smorest",
    "apispec",
    "webargs",
    "flask_cors",
    "flask_compress",
    "flask_limiter",
    "flask_jwt_extended",
    "swagger_ui_bundle",
    "app.core.api",
    "app.core.pipeline",
    "app.core.http_security",
    "app.ops.routes",
)
# The JSON log machinery (web and worker), and the libraries only some commands need.
NOT_FOR_A_CACHE_CALL = (*WEB_ONLY, "structlog", "celery", "kombu", "alembic", "flask_migrate")


def cli_env(instance: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "FLASK_APP": "wsgi",
        "APP_ENV": "development",  # as an operator runs it (testing leaves logging alone)
        "INSTANCE_PATH": str(instance),
        "CACHE_DIR": str(instance / "cache"),
        "TASKS_ENABLED": "false",
        **extra,
    }
    for name in ("PYTEST_CURRENT_TEST", "PYTHONWARNINGS"):
        env.pop(name, None)
    return env


def flask(env: dict[str, str], *args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    """`flask ARGS` as an operator runs it (FLASK_APP=wsgi, as .flaskenv and the Makefile set)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "flask", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def python_json(env: dict[str, str], code: str, *args: str) -> Any:
    """Run `code` in a fresh interpreter; the JSON it printed last."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def imported(stderr: str) -> set[str]:
    """The modules a process imported, from its `-X importtime` lines."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    } - {"imported package"}


def without_importtime(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh embedded instance (SQLite, disk cache), whatever backends the session uses."""
    environment = cli_env(tmp_path)
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        environment.pop(name, None)
    return environment


@pytest.fixture
def configured_env(tmp_path: Path) -> dict[str, str]:
    """The backends of this test session (PostgreSQL and Redis when they are set)."""
    return cli_env(tmp_path)


# What a CLI call loads ----------------------------------------------------------------------


def test_cache_stats_loads_no_web_machinery_no_celery_no_alembic(configured_env) -> None:
    result = flask(configured_env, "cache", "stats", importtime=True)
    assert result.returncode == 0, without_importtime(result.stderr)
    assert result.stdout.startswith("hits "), result.stdout
    modules = imported(result.stderr)
    assert "app.core.cache" in modules  # the command's own machinery, checked to be seen at all
    assert not modules & set(NOT_FOR_A_CACHE_CALL), sorted(modules & set(NOT_FOR_A_CACHE_CALL))


def test_db_current_loads_alembic_but_no_web_machinery(configured_env) -> None:
    result = flask(configured_env, "db", "current", importtime=True)
    assert result.returncode == 0, without_importtime(result.stderr)
    modules = imported(result.stderr)
    assert {"flask_migrate", "alembic"} <= modules
    loaded = modules & {*WEB_ONLY, "structlog", "celery", "app.events.handlers"}
    assert not loaded, sorted(loaded)


def test_help_lists_every_command_without_loading_them(configured_env) -> None:
    result = flask(configured_env, "--help", importtime=True)
    assert result.returncode == 0, without_importtime(result.stderr)
    listed = set(re.findall(r"^  (\S+)\s", result.stdout, flags=re.MULTILINE))
    assert {"db", "users", "seed", "cache", "backfill", "openapi", "routes", "run"} <= listed
    loaded = imported(result.stderr) & {
        *NOT_FOR_A_CACHE_CALL,
        "app.core.cache",
        "app.users.service",
    }
    assert not loaded, sorted(loaded)


def test_routes_and_openapi_still_get_the_web_app(env) -> None:
    """Flask's own `routes` loads the web app (wsgi.py); `openapi` adds its machinery on use."""
    routes = flask(env, "routes")
    assert routes.returncode == 0, routes.stderr
    assert "/api/posts" in routes.stdout
    assert "/ready" in routes.stdout
    document = flask(env, "openapi", "print")
    assert document.returncode == 0, document.stderr
    spec = json.loads(document.stdout)
    assert "/api/posts" in spec["paths"]
    assert document.stderr.strip() == "", document.stderr


def test_the_worker_loads_no_web_machinery(configured_env) -> None:
    code = (
        "import json, sys, worker; "
        f"print(json.dumps(sorted(m for m in {list(WEB_ONLY)!r} + ['app.core.idempotency'] "
        "if m in sys.modules)))"
    )
    assert python_json(configured_env, code) == []


# What tracing's set-up loads (redis-py itself imports the opentelemetry API and part of the SDK).
TRACING_SET_UP = (
    "opentelemetry.sdk.trace",
    "opentelemetry.instrumentation",
    "opentelemetry.exporter",
)


def test_tracing_is_loaded_after_the_fork_not_by_building_the_app(configured_env) -> None:
    """Tracing's set-up (app/core/tracing.py) runs in each gunicorn worker and Celery child
    after the fork: building the web or worker app, or a CLI call, never loads its machinery
    (gunicorn's master preloads it in `when_ready`, once, before forking)."""
    code = (
        "import json, sys, wsgi, worker\n"
        "wsgi.app\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({TRACING_SET_UP!r}))))\n"
    )
    assert python_json(configured_env, code) == []
    result = flask(configured_env, "cache", "stats", importtime=True)
    assert result.returncode == 0, without_importtime(result.stderr)
    assert not {m for m in imported(result.stderr) if m.startswith(TRACING_SET_UP)}


def test_the_cli_app_migrates_with_every_table_of_the_web_app(configured_env) -> None:
    """`flask db migrate | check` compare the database with the metadata: a CLI app's `db`
    must hold every table the web app declares (a missing one would be proposed for a drop)."""
    code = (
        "import json, sys\n"
        "from app import create_app\n"
        "from app.extensions import db\n"
        "app = create_app(role=sys.argv[1])\n"
        "if sys.argv[1] == 'cli':\n"
        "    with app.app_context():\n"
        "        app.cli.commands['db'].make_context('db', ['--help'], resilient_parsing=True)\n"
        "print(json.dumps(sorted(db.metadata.tables)))\n"
    )
    tables = {}
    for role in ("cli", "web"):
        tables[role] = python_json(configured_env, code, role)
    assert "users" in tables["web"]
    assert tables["cli"] == tables["web"]


def test_the_web_app_opens_no_connection_and_no_thread_as_it_is_built(configured_env) -> None:
    """gunicorn builds the app in its master and forks the workers from it (preload_app):
    nothing the build made may be shared by them. SQLite connections are only diskcache's,
    which reopens them in a new process (it keeps the pid beside each)."""
    code = (
        "import gc, json, socket, sqlite3, threading\n"
        "import wsgi\n"
        "app = wsgi.app\n"
        "from app.extensions import db\n"
        "with app.app_context():\n"
        "    pooled = db.engine.pool.checkedin() + db.engine.pool.checkedout()\n"
        "objects = gc.get_objects()\n"
        "sockets = [o for o in objects if isinstance(o, socket.socket) and o.fileno() >= 0]\n"
        "def pid_guarded(con):\n"
        "    return any(isinstance(r, dict) and 'pid' in r for r in gc.get_referrers(con))\n"
        "sqlite = [o for o in objects\n"
        "          if isinstance(o, sqlite3.Connection) and not pid_guarded(o)]\n"
        "print(json.dumps([pooled, len(sockets), len(sqlite), threading.active_count()]))\n"
    )
    pooled, sockets, sqlite, threads = python_json(configured_env, code)
    assert (pooled, sockets, sqlite, threads) == (0, 0, 0, 1)


# `flask db`: plain-text errors on stderr, no warning on a fresh database ------------------


def test_db_upgrade_against_an_unreachable_database_is_one_plain_line(env) -> None:
    url = "postgresql+psycopg://operator:s3cret-pw@127.0.0.1:1/postboard"
    result = flask({**env, "DATABASE_URL": url}, "db", "upgrade")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: database postgresql+psycopg://operator:***@127.0.0.1:1/")
    assert "Connection refused" in lines[0] or "connection failed" in lines[0]
    assert "s3cret-pw" not in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_to_an_unknown_revision_is_a_plain_error_on_stderr(env) -> None:
    result = flask(env, "db", "upgrade", "nosuchrev")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Can't locate revision identified by 'nosuchrev'" in result.stderr
    assert not result.stderr.lstrip().startswith("{"), result.stderr  # no JSON log line


def test_a_fresh_sqlite_database_migrates_and_back_without_a_warning(env) -> None:
    """0003 and 0005 rebuild posts in batch mode: they reflect posts only, not users, whose
    expression indexes SQLite cannot reflect (a SAWarning to every operator, before)."""
    up = flask(env, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert "Running upgrade 0006 -> 0007" in up.stderr  # alembic's steps, as plain lines
    down = flask(env, "db", "downgrade", "0002")
    assert down.returncode == 0, down.stderr
    again = flask(env, "db", "upgrade")
    assert again.returncode == 0, again.stderr
    for result in (up, down, again):
        assert "Warning" not in result.stderr, result.stderr
        assert "Skipped unsupported reflection" not in result.stderr
        assert result.stdout == ""
