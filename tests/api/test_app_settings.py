"""The app is built from Settings: it carries them, takes a Settings object, and a bad setting in
the environment stops create_app (the settings themselves are in tests/unit/test_settings.py)."""

from __future__ import annotations

import pytest
from flask import Flask

from app import create_app
from app.settings import ConfigError, Settings, settings
from tests.support.backends import test_config


def test_the_app_carries_its_settings(app: Flask) -> None:
    with app.app_context():
        current = settings()
    assert current is app.extensions["settings"]
    assert current.database_url == app.config["SQLALCHEMY_DATABASE_URI"]
    assert current.testing
    assert app.testing


def test_create_app_takes_a_settings_object(database_uri: str) -> None:
    given = Settings.from_env("testing", SQLALCHEMY_DATABASE_URI=database_uri)
    built = create_app(given)
    assert built.extensions["settings"] is given
    assert built.config["CACHE_TTL_SECONDS"] == given.cache_ttl_seconds


def test_a_bad_limit_in_the_environment_stops_create_app(
    monkeypatch: pytest.MonkeyPatch, database_uri: str
) -> None:
    monkeypatch.setenv("RATELIMIT_AUTHENTICATED", "1200 a minute")
    with pytest.raises(ConfigError, match="RATELIMIT_AUTHENTICATED: '1200 a minute'"):
        create_app(test_config(database_uri))
