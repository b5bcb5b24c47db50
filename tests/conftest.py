"""Test fixtures: the real migrations on the real backend, a clean database for every test.

Without DATABASE_URL the suite runs on a SQLite file (the embedded default); with it, on that
PostgreSQL database. REDIS_URL, when set, is the Redis used for the token blocklist (and later the
cache and limits); tests only touch keys under this service's prefix.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.extensions import db

pytest_plugins = ["tests.live"]  # the `server` fixture: a real gunicorn

DATABASE_URL = os.environ.get("DATABASE_URL") or None
REDIS_URL = os.environ.get("REDIS_URL") or None
ON_POSTGRES = bool(DATABASE_URL and DATABASE_URL.startswith("postgresql"))
TABLES = ("backfill_runs", "events", "idempotency_keys", "posts", "revoked_tokens", "users")
PASSWORD = "correct horse battery"

needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="needs PostgreSQL: set DATABASE_URL=postgresql+psycopg://..."
)
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://...")


# The embedded default's disk cache, for this test session only (never the repo's instance/).
CACHE_DIR = tempfile.mkdtemp(prefix="postboard-test-cache-")
# One pair of signing secrets for the session, inherited by every process a test starts
# (gunicorn, Celery, the CLI), as one deployment's processes share theirs; without them each
# instance directory would generate its own (app/settings/instance_secrets.py).
for _name in ("SECRET_KEY", "JWT_SECRET_KEY"):
    os.environ.setdefault(_name, secrets.token_urlsafe(48))


def test_config(database_uri: str, **extra: Any) -> dict[str, Any]:
    """Config overrides for an app on `database_uri` (not a test: pytest must not collect it)."""
    return {
        "APP_ENV": "testing",
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "REDIS_URL": REDIS_URL,
        "CACHE_DIR": CACHE_DIR,
        **extra,
    }


test_config.__test__ = False  # type: ignore[attr-defined]


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
        shutil.copy(_sqlite_path(database_uri), template)
        application.config["TEST_SQLITE_TEMPLATE"] = str(template)
    return application


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def reset_database(application: Flask) -> None:
    with application.app_context():
        db.session.remove()
        if ON_POSTGRES:
            with db.engine.begin() as conn:
                conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            # SQLite's backup API rewrites the live file through a proper connection, so other
            # apps and processes with the file open see the fresh copy (a file copy under an open
            # WAL database corrupts it).
            path = _sqlite_path(application.config["SQLALCHEMY_DATABASE_URI"])
            source = sqlite3.connect(application.config["TEST_SQLITE_TEMPLATE"])
            target = sqlite3.connect(path, timeout=30)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()


def reset_cache() -> None:
    """Empty the embedded default's disk cache (Redis keys go with reset_redis)."""
    import diskcache

    diskcache.Cache(CACHE_DIR).clear()


def reset_redis() -> None:
    if not REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = [
        key
        for pattern in ("postboard:*", "LIMITS:postboard*")  # ours, and the rate limiter's
        for key in client.scan_iter(pattern, count=1000)
    ]
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> None:
    if "app" in request.fixturenames:
        application = request.getfixturevalue("app")
        reset_database(application)
        reset_redis()
        reset_cache()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def register(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    """POST /api/users with unique defaults; returns the created user's JSON."""
    name = fields.pop("username", None) or unique()
    body = {
        "email": fields.pop("email", f"{name}@example.com"),
        "username": name,
        "password": fields.pop("password", PASSWORD),
        **fields,
    }
    response = client.post("/api/users", json=body)
    assert response.status_code == 201, response.json
    return response.json["data"]


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.json
    return response.json["data"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Account:
    """A registered user with tokens, for tests that act as someone."""

    def __init__(self, client: FlaskClient, user: dict[str, Any], tokens: dict[str, Any]) -> None:
        self.client = client
        self.user = user
        self.id: str = user["id"]
        self.email: str = user["email"]
        self.tokens = tokens
        self.headers = bearer(tokens["access_token"])

    def post_as(self, title: str = "A post", **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            f"/api/users/{self.id}/posts", json={"title": title, **fields}, headers=self.headers
        )
        assert response.status_code == 201, response.json
        return response.json["data"]


@pytest.fixture
def make_account(client: FlaskClient, app: Flask) -> Callable[..., Account]:
    def make(*, admin: bool = False, **fields: Any) -> Account:
        user = register(client, **fields)
        if admin:
            with app.app_context():
                db.session.execute(
                    sa.text("UPDATE users SET is_admin = :t WHERE public_id = :p"),
                    {"t": True, "p": uuid.UUID(user["id"]).hex if not ON_POSTGRES else user["id"]},
                )
                db.session.commit()
        return Account(client, user, login(client, user["email"]))

    return make


@pytest.fixture
def account(make_account: Callable[..., Account]) -> Account:
    return make_account()


@pytest.fixture
def admin(make_account: Callable[..., Account]) -> Account:
    return make_account(admin=True)


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


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The contract's error envelope with this status and code; returns the `error` object."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert set(error) <= {"code", "message", "details"}
    if "details" in error:
        assert error["details"], "details only where there are any"
        for item in error["details"]:
            assert set(item) == {"field", "message"}
    assert "Traceback" not in response.get_data(as_text=True)
    return error
