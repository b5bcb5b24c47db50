"""Configuration comes from the environment; production refuses weak secrets."""

from __future__ import annotations

import pytest

from app.config import DEV_JWT_SECRET, DEV_SECRET, ConfigError, load_config

STRONG = "x" * 48


@pytest.mark.parametrize(
    ("secret", "jwt_secret"),
    [
        ("", STRONG),
        (STRONG, ""),
        (DEV_SECRET, STRONG),
        (STRONG, DEV_JWT_SECRET),
        ("short", STRONG),
        ("changeme", STRONG),
    ],
)
def test_production_refuses_weak_secrets(monkeypatch, secret, jwt_secret):
    monkeypatch.setenv("SECRET_KEY", secret)
    monkeypatch.setenv("JWT_SECRET_KEY", jwt_secret)
    with pytest.raises(ConfigError):
        load_config("production")


def test_production_starts_with_real_secrets(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", STRONG)
    monkeypatch.setenv("JWT_SECRET_KEY", "y" * 48)
    cfg = load_config("production")
    assert cfg["SECRET_KEY"] == STRONG
    assert cfg["TESTING"] is False


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("RATELIMIT_LOGIN", "3/minute")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "42")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    cfg = load_config("development")
    assert cfg["RATELIMIT_LOGIN"] == "3/minute"
    assert cfg["CACHE_TTL_SECONDS"] == 42
    assert cfg["CORS_ORIGINS"] == ["https://a.example", "https://b.example"]
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@h/db"


def test_unknown_app_env_is_refused():
    with pytest.raises(ConfigError):
        load_config("staging")
