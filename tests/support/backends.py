"""Which backends this test run uses (from the environment), the test app's config, and resetting
the shared state (database, Redis keys, disk cache) between tests.

Without DATABASE_URL the suite runs on a SQLite file (the embedded default); with it, on that
PostgreSQL database. REDIS_URL, when set, is the Redis for the blocklist, cache and limits; tests
only touch keys under this service's prefix.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.extensions import db

DATABASE_URL = os.environ.get("DATABASE_URL") or None
REDIS_URL = os.environ.get("REDIS_URL") or None
ON_POSTGRES = bool(DATABASE_URL and DATABASE_URL.startswith("postgresql"))
TABLES = (
    "backfill_runs",
    "events",
    "events_prune_gate",
    "idempotency_keys",
    "outbox",
    "posts",
    "revoked_tokens",
    "snapshots",
    "users",
)

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


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def reset_database(application: Flask) -> None:
    with application.app_context():
        db.session.remove()
        if ON_POSTGRES:
            with db.engine.begin() as conn:
                conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
                # The shards stay (the migration seeded them); a test's relay leases do not.
                conn.execute(sa.text("UPDATE outbox_shards SET owner = NULL, lease_until = 0"))
        else:
            # SQLite's backup API rewrites the live file through a proper connection, so other
            # apps and processes with the file open see the fresh copy (a file copy under an open
            # WAL database corrupts it).
            path = sqlite_path(application.config["SQLALCHEMY_DATABASE_URI"])
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
    # The embedded default's shared rate-limit counters live beside it (app/core/limiting.py).
    diskcache.Cache(os.path.join(CACHE_DIR, "rate-limits")).clear()


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


# A database URL nothing answers at (port 1 refuses at once): for apps whose database is down.
DEAD_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
