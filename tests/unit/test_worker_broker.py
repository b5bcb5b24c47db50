"""The tests' Celery workers use the broker the app would: CELERY_BROKER_URL, else REDIS_URL (as
README says), else the embedded SQLite broker in the test's own directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.workers import broker_settings

BROKER_VARIABLES = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BROKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_redis_url_alone_is_the_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/11")
    assert broker_settings(tmp_path) == {
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
        "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/11",
    }


def test_celery_broker_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/11")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/12")
    assert broker_settings(tmp_path)["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/12"


def test_no_redis_is_the_embedded_broker_in_the_directory(tmp_path: Path) -> None:
    broker = broker_settings(tmp_path)
    assert broker["CELERY_BROKER_URL"] == f"sqla+sqlite:///{tmp_path / 'celery-broker.sqlite3'}"
    assert broker["CELERY_RESULT_BACKEND"] == f"db+sqlite:///{tmp_path / 'celery-results.sqlite3'}"
