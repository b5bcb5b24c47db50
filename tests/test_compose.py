"""docker-compose.yml cannot be run here (no Docker engine), so its consistency with the code is
checked by reading it: every variable it sets is one the code reads, every command starts
something that exists, and the published port is the one gunicorn binds."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def variables_the_code_reads() -> set[str]:
    config = (ROOT / "app" / "config.py").read_text()
    gunicorn = (ROOT / "gunicorn.conf.py").read_text()
    names = set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', config))
    names |= set(re.findall(r'os\.environ(?:\.get)?[\(\[]\s*"([A-Z0-9_]+)"', config + gunicorn))
    return names


def test_every_variable_compose_sets_is_read_by_the_code() -> None:
    read = variables_the_code_reads()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORT", "WEB_CONCURRENCY"} <= read
    for name, service in SERVICES.items():
        for variable in service.get("environment") or {}:
            if name in ("postgres", "redis"):
                continue  # the images' own settings
            assert variable in read, f"{name} sets {variable}, which the code never reads"


def test_every_variable_compose_sets_is_documented() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    for name, service in SERVICES.items():
        if name in ("postgres", "redis"):
            continue
        for variable in service.get("environment") or {}:
            assert variable in documented, f"{variable} ({name}) is missing from .env.example"


def test_commands_start_what_the_code_provides() -> None:
    assert SERVICES["web"]["command"][:2] == ["gunicorn", "wsgi:app"]
    assert (ROOT / "wsgi.py").exists()
    assert SERVICES["web"]["command"][-1] == "gunicorn.conf.py"
    assert (ROOT / "gunicorn.conf.py").exists()
    assert SERVICES["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert SERVICES["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert (ROOT / "worker" / "__init__.py").exists()
    assert SERVICES["migrate"]["command"] == ["flask", "--app", "wsgi", "db", "upgrade"]


def test_published_port_is_the_one_gunicorn_binds() -> None:
    web = SERVICES["web"]
    bind = web["environment"]["GUNICORN_BIND"]
    host_port, container_port = web["ports"][0].split(":")
    assert bind.endswith(f":{container_port}")
    assert host_port == container_port == "8000"


def test_web_waits_for_healthy_dependencies_and_the_migration() -> None:
    depends = SERVICES["web"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in SERVICES["postgres"]
    assert "pgdata" in COMPOSE["volumes"]


def test_production_secrets_are_required_not_defaulted() -> None:
    environment = SERVICES["web"]["environment"]
    for secret in ("SECRET_KEY", "JWT_SECRET_KEY"):
        assert ":?" in environment[secret], f"{secret} must be required (${{VAR:?...}})"
    assert environment["APP_ENV"] == "production"
