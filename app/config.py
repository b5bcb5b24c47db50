"""Settings from the environment, one class per APP_ENV.

Every value comes from an environment variable (see `.env.example`); the classes only hold the
defaults that differ between environments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from environs import Env

BASE_DIR = Path(__file__).resolve().parent.parent
INSTANCE_DIR = Path(os.environ.get("INSTANCE_PATH", BASE_DIR / "instance"))

# Values that must never reach production: the development defaults below.
DEV_SECRET = "dev-secret-change-me"  # noqa: S105  # nosec B105 # known-bad, refused in production
DEV_JWT_SECRET = "dev-jwt-secret-change-me-32-bytes!"  # noqa: S105  # nosec B105 # refused likewise
MIN_SECRET_LENGTH = 32


class ConfigError(RuntimeError):
    """The environment does not describe a configuration we can run with."""


def _sqlite_url(name: str) -> str:
    return f"sqlite:///{INSTANCE_DIR / name}"


def load_config(env_name: str | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Build the Flask config mapping for APP_ENV (or `env_name`) from the environment."""
    env = Env()
    env.read_env(BASE_DIR / ".env", recurse=False)
    app_env = (env_name or env.str("APP_ENV", "development")).lower()
    if app_env not in {"development", "testing", "production"}:
        raise ConfigError(f"APP_ENV must be development, testing or production, not {app_env!r}")
    testing = app_env == "testing"
    production = app_env == "production"

    redis_url = env.str("REDIS_URL", "") or None
    database_url = env.str("DATABASE_URL", "") or _sqlite_url(
        "test.sqlite3" if testing else "app.sqlite3"
    )
    cfg: dict[str, Any] = {
        "APP_ENV": app_env,
        "TESTING": testing,
        "DEBUG": False,
        # An empty value counts as unset: the development default, or refusal in production.
        "SECRET_KEY": env.str("SECRET_KEY", "") or ("" if production else DEV_SECRET),
        "JWT_SECRET_KEY": env.str("JWT_SECRET_KEY", "") or ("" if production else DEV_JWT_SECRET),
        "JWT_ALGORITHM": env.str("JWT_ALGORITHM", "HS256"),
        "JWT_ACCESS_TOKEN_EXPIRES": env.int("JWT_ACCESS_TOKEN_EXPIRES_SECONDS", 900),
        "JWT_REFRESH_TOKEN_EXPIRES": env.int("JWT_REFRESH_TOKEN_EXPIRES_SECONDS", 30 * 86400),
        # Per-account login lock: after this many failed logins for one email within the window,
        # further logins for it are refused (same 401) without checking the password. 0 = off.
        "LOGIN_ACCOUNT_MAX_FAILURES": env.int("LOGIN_ACCOUNT_MAX_FAILURES", 5),
        "LOGIN_ACCOUNT_WINDOW_SECONDS": env.int("LOGIN_ACCOUNT_WINDOW_SECONDS", 900),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ECHO": env.bool("SQLALCHEMY_ECHO", False),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": env.str("CELERY_BROKER_URL", "")
        or redis_url
        or f"sqla+sqlite:///{INSTANCE_DIR / 'celery-broker.sqlite3'}",
        "CELERY_RESULT_BACKEND": env.str("CELERY_RESULT_BACKEND", "")
        or redis_url
        or f"db+sqlite:///{INSTANCE_DIR / 'celery-results.sqlite3'}",
        # Redis broker: a task a worker received but never acknowledged (the worker died) is
        # delivered again after this long. Keep it above the longest task, ETA and countdown.
        "CELERY_VISIBILITY_TIMEOUT": env.int("CELERY_VISIBILITY_TIMEOUT", 3600),
        "PURGE_REVOKED_TOKENS_SECONDS": env.int("PURGE_REVOKED_TOKENS_SECONDS", 3600),
        "BLOCKLIST_RESYNC_SECONDS": env.int("BLOCKLIST_RESYNC_SECONDS", 60),
        "PORT": env.int("PORT", 8000),
        "WEB_CONCURRENCY": env.int("WEB_CONCURRENCY", 2),
        "LOG_LEVEL": env.str("LOG_LEVEL", "INFO").upper(),
        "CORS_ORIGINS": env.list("CORS_ORIGINS", []),
        # Strict-Transport-Security max-age, sent in production only (0 tells browsers to forget).
        "HSTS_SECONDS": env.int("HSTS_SECONDS", 31536000),
        "MAX_CONTENT_LENGTH": env.int("MAX_CONTENT_LENGTH", 1024 * 1024),
        "RATELIMIT_ENABLED": env.bool("RATELIMIT_ENABLED", not testing),
        "RATELIMIT_ANONYMOUS": env.str("RATELIMIT_ANONYMOUS", "300/minute"),
        "RATELIMIT_AUTHENTICATED": env.str("RATELIMIT_AUTHENTICATED", "1200/minute"),
        "RATELIMIT_LOGIN": env.str("RATELIMIT_LOGIN", "10/minute"),
        "RATELIMIT_REGISTER": env.str("RATELIMIT_REGISTER", "20/hour"),
        # sliding-window-counter (weighted previous + current window: O(1) per caller) or
        # moving-window (an exact log: one Redis list entry per request, scanned on each)
        "RATELIMIT_STRATEGY": env.str("RATELIMIT_STRATEGY", "sliding-window-counter"),
        # Anonymous cached reads answered in one Redis round trip (app/core/fast_reads.py).
        "FAST_READS_ENABLED": env.bool("FAST_READS_ENABLED", True),
        # How many proxies in front of us append to X-Forwarded-For; 0 = trust none (default).
        "TRUSTED_PROXY_COUNT": env.int("TRUSTED_PROXY_COUNT", 0),
        # Idempotency-Key (app/core/idempotency.py): how long a completed key replays its first
        # response; how long an unfinished request holds its key (longer than any request may
        # run: gunicorn's timeout); how often beat purges expired keys.
        "IDEMPOTENCY_TTL_SECONDS": env.int("IDEMPOTENCY_TTL_SECONDS", 86400),
        "IDEMPOTENCY_LOCK_SECONDS": env.int("IDEMPOTENCY_LOCK_SECONDS", 60),
        "IDEMPOTENCY_PURGE_SECONDS": env.int("IDEMPOTENCY_PURGE_SECONDS", 3600),
        "CACHE_ENABLED": env.bool("CACHE_ENABLED", True),
        "CACHE_TTL_SECONDS": env.int("CACHE_TTL_SECONDS", 300),
        # List aggregates (a user's post count, `meta.total`): how long a cached count lives.
        "CACHE_AGGREGATE_TTL_SECONDS": env.int("CACHE_AGGREGATE_TTL_SECONDS", 300),
        # The embedded default's cross-process disk cache (used when REDIS_URL is not set).
        "CACHE_DIR": env.str("CACHE_DIR", str(INSTANCE_DIR / "cache")),
        # Publish Celery tasks (write-through) from the web; off in tests unless one runs a worker.
        "TASKS_ENABLED": env.bool("TASKS_ENABLED", not testing),
        # Circuit breaker around the cache: open after this many failures, retry after this long.
        "CACHE_BREAKER_FAIL_MAX": env.int("CACHE_BREAKER_FAIL_MAX", 3),
        "CACHE_BREAKER_RESET_SECONDS": env.float("CACHE_BREAKER_RESET_SECONDS", 10.0),
        # Beat warms the most recent N users and posts this often (0 = never).
        "CACHE_WARM_LIMIT": env.int("CACHE_WARM_LIMIT", 1000),
        "CACHE_WARM_INTERVAL_SECONDS": env.int("CACHE_WARM_INTERVAL_SECONDS", 600),
        # Backfills (app/backfill): rows per batch (one short transaction each), pause between
        # batches, how long a silent run keeps its claim, PostgreSQL lock_timeout per batch
        # (0 = none), and how long one Celery task runs before it re-queues itself.
        "BACKFILL_BATCH_SIZE": env.int("BACKFILL_BATCH_SIZE", 1000),
        "BACKFILL_SLEEP_SECONDS": env.float("BACKFILL_SLEEP_SECONDS", 0.0),
        "BACKFILL_LEASE_SECONDS": env.float("BACKFILL_LEASE_SECONDS", 120.0),
        "BACKFILL_LOCK_TIMEOUT_SECONDS": env.float("BACKFILL_LOCK_TIMEOUT_SECONDS", 5.0),
        "BACKFILL_TASK_SECONDS": env.float("BACKFILL_TASK_SECONDS", 120.0),
        # Argon2 cost: the library's defaults in production; cheaper in tests only.
        "ARGON2_TIME_COST": env.int("ARGON2_TIME_COST", 1 if testing else 3),
        "ARGON2_MEMORY_COST_KIB": env.int("ARGON2_MEMORY_COST_KIB", 1024 if testing else 65536),
        "PAGINATION_DEFAULT_PER_PAGE": 20,
        "PAGINATION_MAX_PER_PAGE": 100,
        # Offset pages: `meta.total` is an exact count up to this many rows; above it (PostgreSQL
        # only) the planner's estimate, flagged `total_is_estimate`. 0 = always count exactly.
        "PAGINATION_EXACT_COUNT_LIMIT": env.int("PAGINATION_EXACT_COUNT_LIMIT", 100_000),
        "DISK_MIN_FREE_BYTES": env.int("DISK_MIN_FREE_BYTES", 100 * 1024 * 1024),
        # /ready is 200 at head only; during an expand -> contract rollout, set this to the
        # expand revision (README "Changing the schema safely") to serve from there to head.
        "READY_MIN_REVISION": env.str("READY_MIN_REVISION", ""),
        # /health and /ready: each dependency check reports "timeout" after this long.
        "PROBE_TIMEOUT_SECONDS": env.float("PROBE_TIMEOUT_SECONDS", 2.0),
        # GET /metrics: open when empty, else it needs `Authorization: Bearer <METRICS_TOKEN>`.
        "METRICS_TOKEN": env.str("METRICS_TOKEN", "") or None,
        # The Celery workers' PROMETHEUS_MULTIPROC_DIR (searched recursively), merged into the
        # web's /metrics; empty = task metrics are not served by the web.
        "CELERY_METRICS_DIR": env.str("CELERY_METRICS_DIR", "") or None,
        # flask-smorest / OpenAPI
        "API_TITLE": "Postboard API",
        "API_VERSION": "1.0.0",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/api",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "PROPAGATE_EXCEPTIONS": False,
        "JSON_SORT_KEYS": False,
    }
    if overrides:
        cfg.update(overrides)
    if "SQLALCHEMY_ENGINE_OPTIONS" not in cfg:
        # After the overrides: the options must suit the database actually used.
        cfg["SQLALCHEMY_ENGINE_OPTIONS"] = _engine_options(env, cfg["SQLALCHEMY_DATABASE_URI"])
    if cfg["LOGIN_ACCOUNT_MAX_FAILURES"] < 0 or cfg["LOGIN_ACCOUNT_WINDOW_SECONDS"] < 1:
        raise ConfigError(
            "LOGIN_ACCOUNT_MAX_FAILURES must be >= 0 (0 = off) and "
            "LOGIN_ACCOUNT_WINDOW_SECONDS >= 1"
        )
    for name in (
        "IDEMPOTENCY_TTL_SECONDS",
        "IDEMPOTENCY_LOCK_SECONDS",
        "IDEMPOTENCY_PURGE_SECONDS",
    ):
        if int(cfg[name]) < 1:
            raise ConfigError(f"{name} must be >= 1")
    if int(cfg["BACKFILL_BATCH_SIZE"]) < 1 or float(cfg["BACKFILL_SLEEP_SECONDS"]) < 0:
        raise ConfigError("BACKFILL_BATCH_SIZE must be >= 1 and BACKFILL_SLEEP_SECONDS >= 0")
    if float(cfg["BACKFILL_LEASE_SECONDS"]) <= 0 or float(cfg["BACKFILL_TASK_SECONDS"]) <= 0:
        raise ConfigError("BACKFILL_LEASE_SECONDS and BACKFILL_TASK_SECONDS must be > 0")
    if int(cfg["CELERY_VISIBILITY_TIMEOUT"]) < 1:
        raise ConfigError("CELERY_VISIBILITY_TIMEOUT must be >= 1")
    if cfg["APP_ENV"] == "production":
        enforce_production_secrets(cfg)
    return cfg


def _engine_options(env: Env, database_url: str) -> dict[str, Any]:
    if database_url.startswith("sqlite"):
        # One writer at a time on SQLite: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": 30}}
    return {
        "pool_pre_ping": True,
        "pool_size": env.int("DB_POOL_SIZE", 5),
        "max_overflow": env.int("DB_MAX_OVERFLOW", 5),
        "pool_timeout": 5,
        # A server that accepts but never answers must not hold a request (or a probe) forever.
        "connect_args": {"connect_timeout": env.int("DB_CONNECT_TIMEOUT_SECONDS", 5)},
    }


def enforce_production_secrets(cfg: dict[str, Any]) -> None:
    """Refuse to start production with an empty, default or short secret."""
    for key, default in (("SECRET_KEY", DEV_SECRET), ("JWT_SECRET_KEY", DEV_JWT_SECRET)):
        value = cfg.get(key) or ""
        if not value or value == default or value.lower() in {"changeme", "secret", "change-me"}:
            raise ConfigError(f"{key} must be set to a real secret in production")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{key} must be at least {MIN_SECRET_LENGTH} characters in production"
            )
