""".env.example documents exactly the variables that are read: every one Settings reads, every
one another process reads (gunicorn, the Procfile, the supervisor, docker compose), each with a
line of its own saying what it does."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / ".env.example").read_text().splitlines()
ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]+)=")

# Variables read outside Settings, and a file that reads each (checked below, so none goes stale).
READ_ELSEWHERE = {
    "PORT": "gunicorn.conf.py",
    "WEB_CONCURRENCY": "gunicorn.conf.py",
    "GUNICORN_BIND": "gunicorn.conf.py",
    "GUNICORN_TIMEOUT": "gunicorn.conf.py",
    "GUNICORN_GRACEFUL_TIMEOUT": "gunicorn.conf.py",
    "GUNICORN_MAX_REQUESTS": "gunicorn.conf.py",
    "PROMETHEUS_MULTIPROC_DIR": "gunicorn.conf.py",  # and prometheus_client itself
    "RUN_STOP_TIMEOUT": "app/ops/supervisor.py",
    "CELERY_CONCURRENCY": "Procfile",
    "POSTGRES_PASSWORD": "docker-compose.yml",
    "FLOWER_BASIC_AUTH": "docker-compose.yml",  # Flower reads it in its container
}


def documented() -> list[str]:
    return [match.group(1) for line in EXAMPLE if (match := ASSIGNMENT.match(line))]


def test_every_variable_settings_reads_is_documented() -> None:
    missing = sorted(Settings.variables() - set(documented()))
    assert not missing, f"read by Settings but not in .env.example: {missing}"


def test_every_documented_variable_is_read() -> None:
    unread = sorted(set(documented()) - Settings.variables() - set(READ_ELSEWHERE))
    assert not unread, f"in .env.example but read by nothing: {unread}"


@pytest.mark.parametrize(("variable", "reader"), sorted(READ_ELSEWHERE.items()))
def test_the_other_readers_really_read_their_variables(variable: str, reader: str) -> None:
    assert variable not in Settings.variables(), f"{variable} is read by Settings: drop it here"
    assert re.search(rf"\b{variable}\b", (ROOT / reader).read_text()), f"{reader} never reads it"


def test_every_variable_docker_compose_interpolates_is_documented() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", compose))
    assert {"SECRET_KEY", "POSTGRES_PASSWORD"} <= interpolated  # the scan finds them
    missing = sorted(interpolated - set(documented()))
    assert not missing, f"docker-compose.yml reads these, .env.example lacks them: {missing}"


def test_each_variable_appears_once_under_a_line_of_its_own() -> None:
    names = documented()
    assert len(names) == len(set(names)), "a variable is listed twice"
    for previous, line in itertools.pairwise(EXAMPLE):
        if match := ASSIGNMENT.match(line):
            described = previous.startswith("#") and not ASSIGNMENT.match(previous)
            assert described, (
                f"{match.group(1)} has no line of its own above it saying what it does"
            )
