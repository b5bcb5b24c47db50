"""Which backends this test run uses (from the environment), the test app's config, and resetting
the shared state (database, Redis keys, disk cache) between tests.

Without DATABASE_URL the suite runs on a SQLite file (the embedded default); with it, on that
PostgreSQL database. REDIS_URL, when set, is the Redis for the blocklist, cache and limits; tests
only touch keys under this service's prefix. In a parallel run each worker has its own database and
Redis db number (tests/support/parallel.py), set up here before anything reads them.
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
from argon2 import DEFAULT_PARALLELISM
from flask import Flask

from app.extensions import db
from tests.support import parallel

parallel.isolate_worker()
DATABASE_URL = os.environ.get("DATABASE_URL") or None
REDIS_URL = os.environ.get("REDIS_URL") or None
ON_POSTGRES = bool(DATABASE_URL and DATABASE_URL.startswith("postgresql"))
TABLES = (
    "backfill_runs",
    "events",
    "events_prune_gate",
    "idempotency_keys",
    "oauth_clients",
    "oauth_codes",
    "oauth_grants",
    "outbox",
    "posts",
    "revoked_tokens",
    "snapshots",
    "users",
    "webhook_attempts",
    "webhook_deliveries",
    "webhooks",
)
# In the order rows can be deleted (posts refer to users). events is append-only: its trigger
# refuses DELETE, so it is deleted from only where the role may skip triggers (a superuser, as in
# CI), else truncated.
DELETABLE = (
    "events",
    "events_prune_gate",
    "outbox",
    "snapshots",
    "idempotency_keys",
    "revoked_tokens",
    "backfill_runs",
    "webhook_attempts",
    "webhook_deliveries",
    "webhooks",
    "oauth_grants",
    "oauth_codes",
    "oauth_clients",
    "posts",
    "users",
)
# Up to this many rows a table is emptied with DELETE (about a millisecond); above it with
# TRUNCATE (several milliseconds a table, whatever it holds, on PostgreSQL).
DELETE_AT_MOST = 1000
ARGON2_TEST_MEMORY_KIB = 8 * DEFAULT_PARALLELISM

needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="needs PostgreSQL: set DATABASE_URL=postgresql+psycopg://..."
)
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://...")

# The embedded default's disk cache, for this test session only (never the repo's instance/).
CACHE_DIR = tempfile.mkdtemp(prefix="postboard-test-cache-")
# The instance directory of every app and process of this session that names none of its own
# (the embedded broker's and results' files, ...): never the repo's instance/, never another
# worker's.
os.environ["INSTANCE_PATH"] = tempfile.mkdtemp(prefix="postboard-test-instance-")
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
        # Argon2's floor (8 KiB a lane): what tests check is the flow, not the hash's cost, and
        # most tests register and log in someone (tests that need a slow hash set their own).
        "ARGON2_MEMORY_COST_KIB": ARGON2_TEST_MEMORY_KIB,
        **extra,
    }


test_config.__test__ = False  # type: ignore[attr-defined]


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def reset_database(application: Flask) -> None:
    with application.app_context():
        db.session.remove()
        if ON_POSTGRES:
            _empty_postgres_tables()
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


def _empty_postgres_tables() -> None:
    """What TRUNCATE ... RESTART IDENTITY of every table did, at a fraction of the cost: only the
    tables holding rows are emptied, small ones with DELETE, and the id sequences restarted."""
    counts = ", ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT {DELETE_AT_MOST + 1}) AS s)"
        for table in TABLES
    )
    with db.engine.begin() as conn:
        facts = _facts(conn)
        rows = dict(zip(TABLES, conn.execute(sa.text(f"SELECT {counts}")).one(), strict=True))
        deletable = [t for t in DELETABLE if t != "events" or facts["superuser"]]
        big = [t for t in TABLES if rows[t] > DELETE_AT_MOST or (rows[t] and t not in deletable)]
        if big:
            conn.execute(sa.text(f"TRUNCATE {', '.join(big)} RESTART IDENTITY CASCADE"))
        small = [t for t in deletable if rows[t] and t not in big]
        if "events" in small:  # past its append-only trigger, for this transaction only
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        for table in small:
            conn.execute(sa.text(f"DELETE FROM {table}"))
        # Every other id sequence too: a rolled-back insert advances one in an empty table.
        restart = [s for t, owned in facts["sequences"].items() if t not in big for s in owned]
        if restart:
            calls = ", ".join(f"setval('{sequence}', 1, false)" for sequence in restart)
            conn.execute(sa.text(f"SELECT {calls}"))
        # The shards stay (the migration seeded them); a test's relay leases do not.
        conn.execute(
            sa.text(
                "UPDATE outbox_shards SET owner = NULL, lease_until = 0 WHERE owner IS NOT NULL"
            )
        )


_postgres_facts: dict[str, Any] = {}


def _facts(conn: sa.Connection) -> dict[str, Any]:
    """Read once: the sequences each table owns (its serial ids, as RESTART IDENTITY restarts
    them), and whether this role may skip triggers."""
    if not _postgres_facts:
        owned: dict[str, list[str]] = {}
        found = conn.execute(
            sa.text(
                "SELECT t.relname, s.relname FROM pg_depend d "
                "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
                "JOIN pg_class t ON t.oid = d.refobjid "
                "WHERE d.deptype IN ('a', 'i') AND t.relname = ANY(:tables)"
            ),
            {"tables": list(TABLES)},
        )
        for table, sequence in found:
            owned.setdefault(table, []).append(sequence)
        superuser = conn.execute(
            sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar()
        _postgres_facts.update(sequences=owned, superuser=bool(superuser))
    return _postgres_facts


_disk_caches: list[Any] = []  # opened once: opening one costs more than emptying it


def restore_password_cost(application: Flask) -> None:
    """Put back the test app's argon2 cost. create_app sets the process-wide hasher's: an app
    another test made (production: 64 MiB, t=3) would make every later registration slow."""
    from app.core.security import passwords

    cost = (application.config["ARGON2_TIME_COST"], application.config["ARGON2_MEMORY_COST_KIB"])
    hasher = passwords._hasher
    if (hasher.time_cost, hasher.memory_cost) != cost:
        passwords.configure(*cost)


def reset_cache() -> None:
    """Empty the embedded default's disk cache (Redis keys go with reset_redis)."""
    import diskcache

    if not _disk_caches:
        # The embedded default's shared rate-limit counters live beside it (app/core/limiting.py).
        for directory in (CACHE_DIR, os.path.join(CACHE_DIR, "rate-limits")):
            _disk_caches.append(diskcache.Cache(directory))
    for cache in _disk_caches:
        cache.clear()


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
