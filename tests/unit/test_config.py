""".env.example documents exactly the variables that are read: every one Settings reads, every
one another process reads (gunicorn, the Procfile, the supervisor, docker compose), each with a
line of its own saying what it does."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
from pathlib import Path

import pytest

from app.settings import Settings
from tests.support.paths import ROOT

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
    "WEBHOOKS_CONCURRENCY": "Procfile",
    "POSTGRES_PASSWORD": "docker-compose.yml",
    "RABBITMQ_PASSWORD": "docker-compose.yml",
    "FLOWER_BASIC_AUTH": "docker-compose.yml",  # Flower reads it in its container
    "NGINX_ENVSUBST_FILTER": "docker-compose.yml",  # the nginx image's entrypoint reads it
    "GATEWAY_CERTS_DIR": "docker-compose.yml",
    # Read per process by tracing's set-up, before any app's settings (the SDK reads them too).
    **dict.fromkeys(
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_SERVICE_NAME",
            "OTEL_SDK_DISABLED",
        ),
        "app/core/tracing.py",
    ),
    **{
        f"GATEWAY_{name}": "deploy/nginx/postboard.conf.template"  # rendered by the nginx image
        for name in (
            "RATE_PER_SECOND",
            "RATE_BURST",
            "CONNECTIONS_PER_IP",
            "HTTP_PORT",
            "HTTPS_PORT",
            "WEB_UPSTREAM",
            "FLOWER_UPSTREAM",
            "TLS_CERT",
            "TLS_KEY",
            "MAX_BODY_BYTES",
        )
    },
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


# Settings read by a library rather than by our code: the Flask config key and its reader.
READ_BY_LIBRARIES = {
    "SECRET_KEY": "flask",
    "MAX_CONTENT_LENGTH": "flask",
    "SQLALCHEMY_DATABASE_URI": "flask_sqlalchemy",
    "SQLALCHEMY_ECHO": "flask_sqlalchemy",
    "JWT_SECRET_KEY": "flask_jwt_extended",
    "JWT_ACCESS_TOKEN_EXPIRES": "flask_jwt_extended",
}


def package_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.origin is not None
    return "\n".join(p.read_text() for p in Path(spec.origin).parent.rglob("*.py"))


def our_code() -> str:
    paths = [
        ROOT / "gunicorn.conf.py",
        *(ROOT / "app").rglob("*.py"),
        *(ROOT / "worker").rglob("*.py"),
    ]
    paths += (ROOT / "migrations").rglob("*.py")
    return "\n".join(p.read_text() for p in paths if p.parent.name != "settings")


def test_every_setting_is_read_by_something() -> None:
    """No dead setting: each is read by our code (by Flask key or attribute), or by a library."""
    code, settings_code = our_code(), (ROOT / "app" / "settings" / "__init__.py").read_text()
    libraries = {name: package_source(name) for name in set(READ_BY_LIBRARIES.values())}
    for field in dataclasses.fields(Settings):
        key = field.metadata.get("flask")
        if "env" not in field.metadata:
            continue
        if key in READ_BY_LIBRARIES:
            assert key in libraries[READ_BY_LIBRARIES[key]], f"{READ_BY_LIBRARIES[key]}: {key}?"
        elif key:
            assert re.search(rf"\b{key}\b", code), f"nothing reads {key}: remove it"
        else:  # not in the Flask config: read as an attribute (engine options, the factory)
            attribute = rf"\.{field.name}\b"
            assert re.search(attribute, code + settings_code), f"nothing reads {field.name}"
