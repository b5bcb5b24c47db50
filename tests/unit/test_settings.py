"""Settings: every value read from the environment, typed, checked per variable at start-up;
overrides pass the same checks; production refuses weak secrets."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest

import app.settings as settings_module
from app.settings import ConfigError, Settings
from app.settings.instance_secrets import secrets_path

STRONG = "x" * 48


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable Settings reads is set, and no .env file is found: the defaults apply."""
    for name in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_module, "BASE_DIR", tmp_path)
    monkeypatch.setattr(settings_module, "INSTANCE_DIR", tmp_path / "instance")


def test_the_defaults_depend_on_the_environment_kind(tmp_path: Path) -> None:
    dev, testing = Settings.from_env(), Settings.from_env("testing")
    assert dev.app_env == "development"
    assert dev.database_url == f"sqlite:///{tmp_path / 'instance' / 'app.sqlite3'}"
    assert testing.database_url == f"sqlite:///{tmp_path / 'instance' / 'test.sqlite3'}"
    assert dev.celery_broker_url.startswith("sqla+sqlite:///")
    assert (dev.ratelimit_enabled, dev.tasks_enabled) == (True, True)
    assert (testing.ratelimit_enabled, testing.tasks_enabled) == (False, False)
    assert (dev.argon2_time_cost, dev.argon2_memory_cost_kib) == (3, 65536)
    assert (testing.argon2_time_cost, testing.argon2_memory_cost_kib) == (1, 1024)
    # Generated once for the instance directory, shared by every kind outside production.
    assert dev.secret_key == testing.secret_key != dev.jwt_secret_key
    assert secrets_path(tmp_path / "instance").exists()
    assert dev.redis_url is None
    assert dev.cache_dir == str(tmp_path / "instance" / "cache")


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "Testing")
    monkeypatch.setenv("RATELIMIT_LOGIN", "3/minute")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "42")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("SQLALCHEMY_ECHO", "true")
    monkeypatch.setenv("BACKFILL_SLEEP_SECONDS", "0.5")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    values = Settings.from_env()
    assert values.app_env == "testing"
    assert values.ratelimit_login == "3/minute"
    assert values.cache_ttl_seconds == 42
    assert values.cors_origins == ("https://a.example", "https://b.example")
    assert values.database_url == "postgresql+psycopg://u@h/db"
    # Celery follows REDIS_URL unless told otherwise.
    assert values.celery_broker_url == values.celery_result_backend == "redis://cache:6379/0"
    assert values.sqlalchemy_echo is True
    assert values.backfill_sleep_seconds == 0.5
    assert values.log_level == "DEBUG"


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CACHE_TTL_SECONDS", "REDIS_URL", "METRICS_TOKEN", "CORS_ORIGINS", "SECRET_KEY"):
        monkeypatch.setenv(name, "")
    values = Settings.from_env()
    assert values.cache_ttl_seconds == 300
    assert values.redis_url is None
    assert values.metrics_token is None
    assert values.cors_origins == ()
    generated = json.loads(secrets_path(settings_module.INSTANCE_DIR).read_text())
    assert values.secret_key == generated["SECRET_KEY"]


def test_a_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("CACHE_TTL_SECONDS=7\nCACHE_WARM_LIMIT=9\n")
    monkeypatch.setenv("CACHE_WARM_LIMIT", "11")
    values = Settings.from_env()
    assert (values.cache_ttl_seconds, values.cache_warm_limit) == (7, 11)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("CACHE_TTL_SECONDS", "abc", "Not a valid integer"),
        ("SQLALCHEMY_ECHO", "maybe", "Not a valid boolean"),
        ("BACKFILL_SLEEP_SECONDS", "fast", "Not a valid number"),
        ("RATELIMIT_LOGIN", "10 per fortnight", "not a limit string"),
        ("RATELIMIT_ANONYMOUS", "0/minute", "allows nothing"),
        ("RATELIMIT_REGISTER", "20/hour;x", "not a limit string"),
        ("APP_ENV", "staging", "must be one of development, testing, production"),
        ("JWT_ALGORITHM", "none", "must be one of HS256, HS384, HS512"),
        ("JWT_ALGORITHM", "RS256", "must be one of"),
        ("LOG_LEVEL", "loud", "must be one of"),
        ("CACHE_TTL_SECONDS", "-5", "must be >= 1, not -5"),
        ("CACHE_AGGREGATE_TTL_SECONDS", "0", "must be >= 1"),
        ("IDEMPOTENCY_TTL_SECONDS", "-1", "must be >= 1"),
        ("IDEMPOTENCY_LOCK_SECONDS", "0", "must be >= 1"),
        ("JWT_ACCESS_TOKEN_EXPIRES_SECONDS", "0", "must be >= 1"),
        ("CELERY_VISIBILITY_TIMEOUT", "0", "must be >= 1"),
        ("LOGIN_ACCOUNT_MAX_FAILURES", "-1", "must be >= 0"),
        ("LOGIN_ACCOUNT_WINDOW_SECONDS", "0", "must be >= 1"),
        ("HSTS_SECONDS", "-1", "must be >= 0"),
        ("CACHE_BREAKER_RESET_SECONDS", "0", "must be > 0"),
        ("PROBE_TIMEOUT_SECONDS", "-1", "must be > 0"),
        ("BACKFILL_LEASE_SECONDS", "0", "must be > 0"),
        ("BACKFILL_BATCH_SIZE", "0", "must be >= 1"),
        ("ARGON2_MEMORY_COST_KIB", "8", "must be >= 32"),
        ("DATABASE_URL", "localhost:5432", "not a URL"),
        ("REDIS_URL", "http://cache:6379", "must start with redis://"),
        ("CELERY_BROKER_URL", "localhost", "not a URL"),
    ],
)
def test_a_bad_variable_stops_the_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env()
    assert f"{variable}: " in str(raised.value)
    assert problem in str(raised.value)


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_TTL_SECONDS", "abc")
    monkeypatch.setenv("RATELIMIT_LOGIN", "often")
    monkeypatch.setenv("PROBE_TIMEOUT_SECONDS", "0")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env()
    message = str(raised.value)
    for name in ("CACHE_TTL_SECONDS", "RATELIMIT_LOGIN", "PROBE_TIMEOUT_SECONDS"):
        assert f"{name}: " in message


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"CACHE_TTL_SECONDS": -1}, "CACHE_TTL_SECONDS: must be >= 1"),
        ({"CACHE_TTL_SECONDS": "abc"}, "CACHE_TTL_SECONDS: Not a valid integer"),
        ({"CACHE_TTL_SECONDS": 1.5}, "CACHE_TTL_SECONDS: Not a valid integer"),
        ({"RATELIMIT_ENABLED": "perhaps"}, "RATELIMIT_ENABLED: Not a valid boolean"),
        ({"RATELIMIT_LOGIN": "lots"}, "RATELIMIT_LOGIN: 'lots' is not a limit string"),
        ({"SQLALCHEMY_DATABASE_URI": "nonsense"}, "DATABASE_URL: is not a URL"),
        ({"cache_tll_seconds": 5}, "unknown settings: cache_tll_seconds"),
    ],
)
def test_overrides_pass_the_same_checks(override: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Settings.from_env("testing", **override)


def test_overrides_by_variable_flask_key_or_field_name() -> None:
    values = Settings.from_env(
        "testing",
        SQLALCHEMY_DATABASE_URI="sqlite:///elsewhere.sqlite3",
        CACHE_TTL_SECONDS="42",  # text is parsed like the variable's text
        cache_breaker_reset_seconds=1,
        CORS_ORIGINS=["https://a.example"],
        REDIS_URL=None,  # None or "" means the default
        COMPRESS_MIN_SIZE=1,  # not a setting: an extension's option, passed on as is
    )
    assert values.database_url == "sqlite:///elsewhere.sqlite3"
    assert values.cache_ttl_seconds == 42
    assert values.cache_breaker_reset_seconds == 1.0
    assert values.cors_origins == ("https://a.example",)
    assert values.redis_url is None
    config = values.to_flask_config()
    assert config["COMPRESS_MIN_SIZE"] == 1
    assert config["CORS_ORIGINS"] == ["https://a.example"]


@pytest.mark.parametrize(
    ("secret", "jwt_secret"),
    [
        ("", STRONG),
        (STRONG, ""),
        ("dev-secret-change-me", STRONG),  # the public development values of old
        (STRONG, "dev-jwt-secret-change-me-32-bytes!"),
        ("short", STRONG),
        ("changeme", STRONG),
        (STRONG, "Secret"),
    ],
)
def test_production_refuses_weak_secrets(
    monkeypatch: pytest.MonkeyPatch, secret: str, jwt_secret: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", secret)
    monkeypatch.setenv("JWT_SECRET_KEY", jwt_secret)
    with pytest.raises(ConfigError, match="SECRET_KEY must"):
        Settings.from_env("production")


def test_production_refuses_to_start_without_secrets() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY must be set"):
        Settings.from_env("production")


def test_production_starts_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", STRONG)
    monkeypatch.setenv("JWT_SECRET_KEY", "y" * 48)
    values = Settings.from_env("production")
    assert values.secret_key == STRONG
    assert values.production
    assert values.to_flask_config()["TESTING"] is False


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET_KEY", "jwt-" + STRONG)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:db-password@h/db")
    monkeypatch.setenv("METRICS_TOKEN", "scrape-token")
    values = Settings.from_env()
    text = repr(values)
    assert "cache_ttl_seconds=300" in text
    assert not any(s in text for s in ("jwt-xxx", "db-password", "scrape-token", values.secret_key))


def test_settings_are_frozen() -> None:
    values = Settings.from_env("testing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        values.cache_ttl_seconds = 1  # type: ignore[misc]


def test_direct_construction_is_checked_too() -> None:
    values = Settings.from_env("testing")
    with pytest.raises(ConfigError, match="CACHE_TTL_SECONDS: must be >= 1"):
        dataclasses.replace(values, cache_ttl_seconds=0)


def test_the_flask_config_has_what_flask_and_our_code_read() -> None:
    config = Settings.from_env("testing").to_flask_config()
    assert config["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(seconds=900)
    assert config["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=30)
    assert config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
    assert config["SQLALCHEMY_ENGINE_OPTIONS"] == {"connect_args": {"timeout": 30}}
    assert config["TESTING"] is True
    # Settings nothing reads are gone (Flask 3 ignores JSON_SORT_KEYS; flask-jwt-extended 4 has
    # no blacklist option; pagination's bounds live in app/core/pagination.py).
    dead = {"JSON_SORT_KEYS", "JWT_BLACKLIST_ENABLED", "FAST_READS_ENABLED"}
    dead |= {"PAGINATION_DEFAULT_PER_PAGE", "PAGINATION_MAX_PER_PAGE", "PORT", "WEB_CONCURRENCY"}
    assert not dead & set(config)


def test_postgresql_gets_a_bounded_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_SECONDS", "2")
    options = Settings.from_env().engine_options()
    assert options["pool_size"] == 7
    assert options["connect_args"] == {"connect_timeout": 2}
    assert options["pool_pre_ping"] is True


@pytest.mark.parametrize("variable", ["WEBHOOKS_ALLOW_HTTP", "WEBHOOKS_ALLOW_PRIVATE"])
def test_production_refuses_to_start_with_unsafe_webhook_targets(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("SECRET_KEY", STRONG)
    monkeypatch.setenv("JWT_SECRET_KEY", "y" * 48)
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=f"{variable} must be false in production"):
        Settings.from_env("production")
    # Development and tests may lift them.
    assert getattr(Settings.from_env("testing"), variable.lower()) is True


def test_webhook_defaults() -> None:
    values = Settings.from_env()
    assert (values.webhooks_allow_http, values.webhooks_allow_private) == (False, False)
    assert values.webhooks_queue == "webhooks"
    assert (values.webhooks_timeout_seconds, values.webhooks_max_attempts) == (10, 8)
    assert (values.webhooks_backoff_base_seconds, values.webhooks_backoff_max_seconds) == (5, 3600)
    assert (values.webhooks_breaker_failures, values.webhooks_breaker_reset_seconds) == (5, 60)
    assert (values.webhooks_max_response_bytes, values.webhooks_per_user) == (65536, 25)
