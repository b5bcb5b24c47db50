"""Fixtures for every test: the real migrations on the real backend, a clean database for every
test that uses the app, a test client, and accounts to act as.

The machinery lives in tests/support/ (backends, servers, workers) and the data builders in
tests/factories.py; this file only wires them into fixtures, and marks each test with its kind
(unit, api, system) from the directory it lives in.
"""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.core.logging import configure_logging
from app.core.security import passwords
from app.extensions import db
from tests import factories
from tests.factories import PASSWORD, Account, bearer, login, register, unique
from tests.support.assertions import assert_error
from tests.support.backends import (
    CACHE_DIR,
    DATABASE_URL,
    ON_POSTGRES,
    REDIS_URL,
    TABLES,
    needs_postgres,
    needs_redis,
    reset_cache,
    reset_database,
    reset_redis,
    restore_password_cost,
    sqlite_path,
    test_config,
)
from tests.support.logs import LIBRARY_LOGGERS
from tests.support.parallel import create_worker_database, drop_worker_database, limit_workers

pytest_plugins = ["tests.support.live"]  # the `server` fixture: a real gunicorn

# Re-exported for test modules written before tests/factories.py and tests/support/ existed.
__all__ = [
    "CACHE_DIR",
    "DATABASE_URL",
    "ON_POSTGRES",
    "PASSWORD",
    "REDIS_URL",
    "TABLES",
    "Account",
    "assert_error",
    "bearer",
    "login",
    "needs_postgres",
    "needs_redis",
    "register",
    "reset_cache",
    "reset_redis",
    "test_config",
    "unique",
]

KINDS = ("unit", "api", "system")
TESTS = Path(__file__).resolve().parent
_LIMITED: list[str] = []  # what limit_workers did, for the header


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    said = limit_workers(config)  # before xdist starts its workers (at session start)
    if said:
        _LIMITED.append(said)


def pytest_report_header() -> list[str]:
    return _LIMITED


def pytest_sessionstart() -> None:
    create_worker_database()  # a parallel worker's own PostgreSQL database (a no-op otherwise)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish() -> None:
    drop_worker_database()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--serial",
        choices=("include", "exclude", "only"),
        default="include",
        help="tests marked serial (timing drills): run them too (default), leave them out (make "
        "test's parallel part), or run only them (its serial part)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test unit/api/system from its directory (tests/fuzz counts as system), so that
    `pytest -m "not system"` is the fast subset; then keep or leave out the serial ones."""
    for item in items:
        try:
            parts = item.path.resolve().relative_to(TESTS).parts
        except ValueError:
            continue
        kind = "system" if parts[0] == "fuzz" else parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))
    serial = config.getoption("serial")
    if serial == "include":
        return
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        is_serial = item.get_closest_marker("serial") is not None
        (keep if is_serial == (serial == "only") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def database_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    if DATABASE_URL:
        return DATABASE_URL
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"


@pytest.fixture(scope="session")
def app(database_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    from flask_migrate import upgrade

    application = create_app(test_config(database_uri))
    with application.app_context():
        upgrade()
        db.engine.dispose()
    if not ON_POSTGRES:
        # A migrated copy to restore before each test: faster than running migrations again.
        template = tmp_path_factory.mktemp("template") / "template.sqlite3"
        shutil.copy(sqlite_path(database_uri), template)
        application.config["TEST_SQLITE_TEMPLATE"] = str(template)
    return application


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    if "app" in request.fixturenames:
        application = request.getfixturevalue("app")
        reset_database(application)
        reset_redis()
        reset_cache()
        restore_password_cost(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_account(client: FlaskClient, app: Flask) -> Callable[..., Account]:
    def make(*, admin: bool = False, **fields: Any) -> Account:
        return factories.make_account(client, app, admin=admin, **fields)

    return make


@pytest.fixture
def account(make_account: Callable[..., Account]) -> Account:
    return make_account()


@pytest.fixture
def other(make_account: Callable[..., Account]) -> Account:
    """A second user, for what one may not do to another's resources."""
    return make_account()


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(admin=True)


@pytest.fixture
def make_app(app: Flask) -> Iterator[Callable[..., Flask]]:
    """Another app (another web process) on the same database and Redis, with config overrides;
    each is disposed of afterwards."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        another = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **overrides))
        made.append(another)
        return another

    yield make
    for another in made:
        with another.app_context():
            db.engine.dispose()
    # create_app configures the process-wide hasher: put the session app's (cheap) cost back.
    passwords.configure(app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST_KIB"])


@pytest.fixture
def row_counts(app: Flask) -> Callable[[], dict[str, int]]:
    """Rows per table, to show that a refused request changed nothing."""

    def counts() -> dict[str, int]:
        with app.app_context():
            result = {
                table: db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in TABLES
            }
            db.session.remove()
            return result

    return counts


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


@pytest.fixture(autouse=True)
def _no_tracing_left_behind() -> Iterator[None]:
    """A test that set tracing up in this process (or an in-process worker that did, through
    its worker_init signal) leaves no instrumentation to the next test."""
    yield
    from app.core import tracing

    if tracing.current() is not None:
        tracing.reset_tracing()
