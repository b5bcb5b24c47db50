"""One typed settings object, read from the environment (and `.env`) once per app.

Each field below names its environment variable, its default and its checks in one place; every
value is parsed by environs, and every value, whether from the environment, a default or an
override, passes the same checks, so a bad setting stops the start with a `ConfigError` naming
the variable. Code that wants attributes calls `settings()`; the Flask config is derived from it.
"""

# `setting(...)` returns a dataclasses.field (metadata only), not a shared mutable default.
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_type_hints

import marshmallow as ma
from argon2 import DEFAULT_PARALLELISM
from environs import Env, EnvError
from flask import current_app

from app.settings.fields import (
    ConfigError,
    Field,
    Values,
    a_database_url,
    a_limit_string,
    a_queue_name,
    a_redis_url,
    a_url,
    above,
    at_least,
    default_of,
    kind_of,
    messages,
    parse_override,
    problems_with,
    read_variable,
    report,
    resolve,
    setting,
)
from app.settings.instance_secrets import instance_secret
from app.settings.production import enforce_production_secrets, enforce_production_webhook_targets

__all__ = [
    "INSTANCE_DIR",
    "ConfigError",
    "Settings",
    "enforce_production_secrets",
    "enforce_production_webhook_targets",
    "settings",
]

# The repository root: where `.env` is read from and `instance/` lives by default.
BASE_DIR = Path(__file__).resolve().parents[2]
# The instance directory the process environment names, for code that runs before any app.
INSTANCE_DIR = Path(os.environ.get("INSTANCE_PATH") or BASE_DIR / "instance")


AppEnv = Literal["development", "testing", "production"]
# HMAC only: the service signs with a shared secret and has no key pair to offer RS*/ES*.
JwtAlgorithm = Literal["HS256", "HS384", "HS512"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# Fixed Flask and flask-smorest options: part of the code, not of a deployment.
_FLASK_CONSTANTS: dict[str, Any] = {
    "DEBUG": False,
    "PROPAGATE_EXCEPTIONS": False,
    "API_TITLE": "Postboard API",
    "API_VERSION": "1.0.0",
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
}


# --- defaults that depend on settings read before them -------------------------------------------


def _instance_secret(name: str) -> Callable[[Values], str]:
    """Outside production, this instance's generated secret (instance/secrets.json); production
    gets "" and refuses to start."""
    return lambda v: (
        "" if v["app_env"] == "production" else instance_secret(v["instance_dir"], name)
    )


def _instance_dir(v: Values) -> Path:
    return INSTANCE_DIR


def _unless_testing(v: Values) -> bool:
    return bool(v["app_env"] != "testing")


def _in_testing(testing: int, otherwise: int) -> Callable[[Values], int]:
    return lambda v: testing if v["app_env"] == "testing" else otherwise


def _sqlite_default(v: Values) -> str:
    name = "test.sqlite3" if v["app_env"] == "testing" else "app.sqlite3"
    return f"sqlite:///{v['instance_dir'] / name}"


def _redis_or_sqlite(scheme: str, file: str) -> Callable[[Values], str]:
    return lambda v: v["redis_url"] or f"{scheme}:///{v['instance_dir'] / file}"


def _seconds(value: int) -> timedelta:
    return timedelta(seconds=value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting the service reads, typed and checked. Build it with `from_env`."""

    # Which deployment: picks the defaults below; production refuses weak secrets.
    app_env: AppEnv = setting("APP_ENV", "development", normalise=str.lower)
    # Where the embedded default keeps its SQLite files, broker, disk cache and beat schedule.
    instance_dir: Path = setting("INSTANCE_PATH", _instance_dir, flask=None)

    # Signing keys (cursors, sealed stores; JWTs): unset = generated once per instance directory
    # (instance/secrets.json) outside production; production refuses to start without them.
    secret_key: str = setting("SECRET_KEY", _instance_secret("SECRET_KEY"), secret=True)
    jwt_secret_key: str = setting("JWT_SECRET_KEY", _instance_secret("JWT_SECRET_KEY"), secret=True)
    jwt_algorithm: JwtAlgorithm = setting("JWT_ALGORITHM", "HS256", normalise=str.upper)
    jwt_access_token_expires_seconds: int = setting(
        "JWT_ACCESS_TOKEN_EXPIRES_SECONDS",
        900,
        at_least(1),
        flask="JWT_ACCESS_TOKEN_EXPIRES",
        export=_seconds,
    )
    jwt_refresh_token_expires_seconds: int = setting(
        "JWT_REFRESH_TOKEN_EXPIRES_SECONDS",
        30 * 86400,
        at_least(1),
        flask="JWT_REFRESH_TOKEN_EXPIRES",
        export=_seconds,
    )
    # Login throttle (app/auth/throttle.py): failures per (email, address), per email (0 = off).
    login_account_max_failures: int = setting("LOGIN_ACCOUNT_MAX_FAILURES", 5, at_least(0))
    login_account_window_seconds: int = setting("LOGIN_ACCOUNT_WINDOW_SECONDS", 900, at_least(1))
    login_account_spread_max_failures: int = setting(
        "LOGIN_ACCOUNT_SPREAD_MAX_FAILURES", 50, at_least(0)
    )

    # Database: a SQLite file under instance/ unless DATABASE_URL names a server.
    database_url: str = setting(
        "DATABASE_URL",
        _sqlite_default,
        a_database_url,
        flask="SQLALCHEMY_DATABASE_URI",
        secret=True,
    )
    sqlalchemy_echo: bool = setting("SQLALCHEMY_ECHO", False)
    # PostgreSQL pool; the connect timeout stops a server that never answers from holding a request.
    db_pool_size: int = setting("DB_POOL_SIZE", 5, at_least(1), flask=None)
    db_max_overflow: int = setting("DB_MAX_OVERFLOW", 5, at_least(0), flask=None)
    db_connect_timeout_seconds: int = setting(
        "DB_CONNECT_TIMEOUT_SECONDS", 5, at_least(1), flask=None
    )

    # Redis (blocklist, cache, rate limits); None = the embedded fallbacks.
    redis_url: str | None = setting("REDIS_URL", None, a_redis_url, secret=True)
    # Celery: the Redis above when set, else SQLite files under instance/ (or amqp:// RabbitMQ).
    celery_broker_url: str = setting(
        "CELERY_BROKER_URL",
        _redis_or_sqlite("sqla+sqlite", "celery-broker.sqlite3"),
        a_url,
        secret=True,
    )
    celery_result_backend: str = setting(
        "CELERY_RESULT_BACKEND",
        _redis_or_sqlite("db+sqlite", "celery-results.sqlite3"),
        a_url,
        secret=True,
    )
    # Redis broker: an unacknowledged task comes back after this; keep it above any task or ETA.
    celery_visibility_timeout: int = setting("CELERY_VISIBILITY_TIMEOUT", 3600, at_least(1))
    # The queue tasks go to unless routed elsewhere (a quorum queue on RabbitMQ).
    celery_default_queue: str = setting("CELERY_DEFAULT_QUEUE", "celery", a_queue_name)
    # Beat: purge expired revocations; re-copy revocations to a Redis that may have lost them.
    purge_revoked_tokens_seconds: int = setting("PURGE_REVOKED_TOKENS_SECONDS", 3600, at_least(1))
    blocklist_resync_seconds: int = setting("BLOCKLIST_RESYNC_SECONDS", 60, at_least(1))

    # HTTP: log level of every process; allowed browser origins (each checked by
    # app/core/http_security.py); HSTS max-age (production only); request body cap; proxies
    # in front of us that append to X-Forwarded-For (0 = trust none).
    log_level: LogLevel = setting("LOG_LEVEL", "INFO", normalise=str.upper)
    cors_origins: tuple[str, ...] = setting("CORS_ORIGINS", (), export=list)
    hsts_seconds: int = setting("HSTS_SECONDS", 31536000, at_least(0))
    max_content_length: int = setting("MAX_CONTENT_LENGTH", 1024 * 1024, at_least(1))
    trusted_proxy_count: int = setting("TRUSTED_PROXY_COUNT", 0, at_least(0))

    # Rate limits: off by default in tests; limit strings checked by the limits library.
    ratelimit_enabled: bool = setting("RATELIMIT_ENABLED", _unless_testing)
    ratelimit_anonymous: str = setting("RATELIMIT_ANONYMOUS", "300/minute", a_limit_string)
    ratelimit_authenticated: str = setting("RATELIMIT_AUTHENTICATED", "1200/minute", a_limit_string)
    ratelimit_login: str = setting("RATELIMIT_LOGIN", "10/minute", a_limit_string)
    ratelimit_register: str = setting("RATELIMIT_REGISTER", "20/hour", a_limit_string)

    # Idempotency-Key: replay window; hold of an unfinished request (above gunicorn's timeout);
    # beat's purge interval.
    idempotency_ttl_seconds: int = setting("IDEMPOTENCY_TTL_SECONDS", 86400, at_least(1))
    idempotency_lock_seconds: int = setting("IDEMPOTENCY_LOCK_SECONDS", 60, at_least(1))
    idempotency_purge_seconds: int = setting("IDEMPOTENCY_PURGE_SECONDS", 3600, at_least(1))

    # Read cache: Redis when set, else a disk cache shared by this host's processes (CACHE_DIR).
    cache_enabled: bool = setting("CACHE_ENABLED", True)
    cache_ttl_seconds: int = setting("CACHE_TTL_SECONDS", 300, at_least(1))
    cache_aggregate_ttl_seconds: int = setting("CACHE_AGGREGATE_TTL_SECONDS", 300, at_least(1))
    cache_dir: str = setting("CACHE_DIR", lambda v: str(v["instance_dir"] / "cache"))
    # Circuit breaker around the cache: open after this many failures, retry after this long
    # (a background probe makes the retry, so a short reset costs requests nothing).
    cache_breaker_fail_max: int = setting("CACHE_BREAKER_FAIL_MAX", 3, at_least(1))
    cache_breaker_reset_seconds: float = setting("CACHE_BREAKER_RESET_SECONDS", 3.0, above(0))
    # Every Redis client's budget (cache, blocklist, limiter, broker): a dead Redis costs this
    # much once, then the breakers (blocklist, broker) skip it until a probe succeeds.
    redis_socket_timeout_seconds: float = setting("REDIS_SOCKET_TIMEOUT_SECONDS", 0.25, above(0))
    redis_connect_timeout_seconds: float = setting("REDIS_CONNECT_TIMEOUT_SECONDS", 0.25, above(0))
    redis_breaker_fail_max: int = setting("REDIS_BREAKER_FAIL_MAX", 3, at_least(1))
    redis_breaker_reset_seconds: float = setting("REDIS_BREAKER_RESET_SECONDS", 5.0, above(0))
    # Beat warms the most recent N users and posts this often (0 = never).
    cache_warm_limit: int = setting("CACHE_WARM_LIMIT", 1000, at_least(0))
    cache_warm_interval_seconds: int = setting("CACHE_WARM_INTERVAL_SECONDS", 600, at_least(0))
    # Publish Celery tasks (write-through) from the web; off in tests unless one runs a worker.
    tasks_enabled: bool = setting("TASKS_ENABLED", _unless_testing)

    # Backfills: rows per batch, pause between batches, claim lease of a silent run, PostgreSQL
    # lock_timeout per batch (0 = none), run time of one Celery task before it re-queues itself.
    backfill_batch_size: int = setting("BACKFILL_BATCH_SIZE", 1000, at_least(1))
    backfill_sleep_seconds: float = setting("BACKFILL_SLEEP_SECONDS", 0.0, at_least(0))
    backfill_lease_seconds: float = setting("BACKFILL_LEASE_SECONDS", 120.0, above(0))
    backfill_lock_timeout_seconds: float = setting(
        "BACKFILL_LOCK_TIMEOUT_SECONDS", 5.0, at_least(0)
    )
    backfill_task_seconds: float = setting("BACKFILL_TASK_SECONDS", 120.0, above(0))

    # Outbox relay (`flask outbox relay`): the feed's broker queue; events per claim; the sleep
    # after a batch that left nothing to do, doubled while idle up to the idle cap; how long a
    # killed relay's shards stay held. Feed consumers remember a processed event id this long
    # (keep it above CELERY_VISIBILITY_TIMEOUT: a redelivery comes after that).
    outbox_queue: str = setting("OUTBOX_QUEUE", "events", a_queue_name)
    outbox_batch_size: int = setting("OUTBOX_BATCH_SIZE", 500, at_least(1))
    outbox_poll_seconds: float = setting("OUTBOX_POLL_SECONDS", 0.25, above(0))
    outbox_idle_poll_seconds: float = setting("OUTBOX_IDLE_POLL_SECONDS", 1.0, above(0))
    outbox_lease_seconds: float = setting("OUTBOX_LEASE_SECONDS", 30.0, above(0))
    feed_dedupe_seconds: int = setting("FEED_DEDUPE_SECONDS", 7200, at_least(1))

    # Webhooks (docs/webhooks.md): plain http:// and private/loopback targets, for development
    # and tests only (production refuses to start with either); the delivery queue; one
    # attempt's timeout; attempts before a delivery is dead-lettered; the exponential backoff
    # between them (base, cap); the shared breaker per target (failures that open it, seconds
    # before a half-open probe); the most of a response body read; subscriptions per user.
    webhooks_allow_http: bool = setting("WEBHOOKS_ALLOW_HTTP", False)
    webhooks_allow_private: bool = setting("WEBHOOKS_ALLOW_PRIVATE", False)
    webhooks_queue: str = setting("WEBHOOKS_QUEUE", "webhooks", a_queue_name)
    webhooks_timeout_seconds: float = setting("WEBHOOKS_TIMEOUT_SECONDS", 10.0, above(0))
    webhooks_max_attempts: int = setting("WEBHOOKS_MAX_ATTEMPTS", 8, at_least(1))
    webhooks_backoff_base_seconds: float = setting("WEBHOOKS_BACKOFF_BASE_SECONDS", 5.0, above(0))
    webhooks_backoff_max_seconds: float = setting("WEBHOOKS_BACKOFF_MAX_SECONDS", 3600.0, above(0))
    webhooks_breaker_failures: int = setting("WEBHOOKS_BREAKER_FAILURES", 5, at_least(1))
    webhooks_breaker_reset_seconds: float = setting(
        "WEBHOOKS_BREAKER_RESET_SECONDS", 60.0, above(0)
    )
    webhooks_max_response_bytes: int = setting("WEBHOOKS_MAX_RESPONSE_BYTES", 65536, at_least(0))
    webhooks_per_user: int = setting("WEBHOOKS_PER_USER", 25, at_least(1))

    # Argon2id cost: the library's defaults, cheaper in tests only (argon2 needs 8 KiB a lane).
    argon2_time_cost: int = setting("ARGON2_TIME_COST", _in_testing(1, 3), at_least(1))
    argon2_memory_cost_kib: int = setting(
        "ARGON2_MEMORY_COST_KIB", _in_testing(1024, 65536), at_least(8 * DEFAULT_PARALLELISM)
    )

    # Offset pages: `meta.total` is exact up to this many rows, the planner's estimate above
    # (PostgreSQL; 0 = always exact).
    pagination_exact_count_limit: int = setting(
        "PAGINATION_EXACT_COUNT_LIMIT", 100_000, at_least(0)
    )

    # History: a snapshot of an aggregate's state every this many of its events, written in the
    # write's transaction, so `as_of` replays fewer than this many events (app/core/history.py).
    events_snapshot_every: int = setting("EVENTS_SNAPSHOT_EVERY", 100, at_least(1))

    # Probes and metrics: low-disk threshold; the oldest migration /ready accepts during an
    # expand -> contract rollout ("" = head only); per-check timeout; /metrics bearer token
    # (None = open); the Celery workers' metrics directory merged into /metrics (None = off).
    disk_min_free_bytes: int = setting("DISK_MIN_FREE_BYTES", 100 * 1024 * 1024, at_least(0))
    ready_min_revision: str = setting("READY_MIN_REVISION", "")
    probe_timeout_seconds: float = setting("PROBE_TIMEOUT_SECONDS", 2.0, above(0))
    metrics_token: str | None = setting("METRICS_TOKEN", None, secret=True)
    celery_metrics_dir: str | None = setting("CELERY_METRICS_DIR", None)

    # Flask and extension options given as overrides (COMPRESS_MIN_SIZE=1 in a test), passed on.
    flask_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        report(
            [p for f in _fields() for p in problems_with(f, getattr(self, f.name), _KINDS[f.name])]
        )
        if self.production:
            enforce_production_secrets(self)
            enforce_production_webhook_targets(self)

    @property
    def testing(self) -> bool:
        return self.app_env == "testing"

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    @classmethod
    def variables(cls) -> set[str]:
        """The environment variables the settings read."""
        return {f.metadata["env"] for f in _fields()}

    @classmethod
    def from_env(cls, app_env: str | None = None, **overrides: Any) -> Settings:
        """Read every setting from the environment and `.env`.

        `overrides` keyed by field name, variable or Flask key replace that setting and pass the
        same checks; other upper-case keys are Flask or extension options, passed on as given.
        """
        given, options = resolve(
            _fields(), {**overrides, **({"APP_ENV": app_env} if app_env else {})}
        )
        env = Env(eager=False)  # collect every unparsable variable, then report them together
        env.read_env(BASE_DIR / ".env", recurse=False)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in _fields():
            try:
                if f.name in given:
                    value = parse_override(f, given[f.name], _KINDS[f.name])
                else:
                    value = read_variable(env, f, _KINDS[f.name])
            except ma.ValidationError as error:
                problems += [f"{f.metadata['env']}: {message}" for message in messages(error)]
                value = None
            values[f.name] = default_of(f, values) if value is None else value
            problems += problems_with(f, values[f.name], _KINDS[f.name])
        try:
            env.seal()
        except EnvError as error:
            unparsable = getattr(error, "error_messages", {})
            problems += [f"{name}: {'; '.join(found)}" for name, found in unparsable.items()]
        report(problems)
        return cls(**values, flask_options=MappingProxyType(options))

    def to_flask_config(self) -> dict[str, Any]:
        """The Flask config: each setting with a Flask key, the fixed options, the given ones."""
        config = {**_FLASK_CONSTANTS, "TESTING": self.testing}
        for f in _fields():
            if f.metadata["flask"]:
                value = getattr(self, f.name)
                export = f.metadata["export"]
                config[f.metadata["flask"]] = export(value) if export else value
        config["SQLALCHEMY_ENGINE_OPTIONS"] = self.engine_options()
        return {**config, **self.flask_options}

    def engine_options(self) -> dict[str, Any]:
        """SQLAlchemy engine options suited to the database actually used."""
        if self.database_url.startswith("sqlite"):
            # One writer at a time on SQLite: wait for the lock instead of failing at once.
            return {"connect_args": {"timeout": 30}}
        return {
            "pool_pre_ping": True,
            "pool_size": self.db_pool_size,
            "max_overflow": self.db_max_overflow,
            "pool_timeout": 5,
            "connect_args": {"connect_timeout": self.db_connect_timeout_seconds},
        }


def settings() -> Settings:
    """The current app's settings, typed."""
    value: Settings = current_app.extensions["settings"]
    return value


# --- machinery -------------------------------------------------------------------------------


def _fields() -> Iterator[Field]:
    """The fields read from the environment."""
    return (f for f in dataclasses.fields(Settings) if "env" in f.metadata)


_HINTS = get_type_hints(Settings)
_KINDS = {f.name: kind_of(_HINTS[f.name]) for f in _fields()}
