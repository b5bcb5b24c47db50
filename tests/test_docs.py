"""The operator documentation keeps up with the code: every environment variable the code reads
is in `.env.example` and in README's Operations section, and every `flask` command the app
registers is in README's operator CLI list."""

from __future__ import annotations

import re
from pathlib import Path

import click
from flask import Flask

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

# Read from the environment by the code besides Settings (app/settings), in several forms.
_ENV_PATTERNS = (
    r"os\.environ(?:\.get)?[\(\[]\s*[\"']([A-Z][A-Z0-9_]+)[\"']",  # os.environ["X"], .get("X")
    r'os\.getenv\(\s*"([A-Z][A-Z0-9_]+)"',
)
# Set for Python itself or by the test/bench harness, not settings an operator chooses.
_NOT_SETTINGS = {"PYTHONPATH", "PATH", "HOME", "CI"}


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    files = [ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]
    files += list((ROOT / "app").rglob("*.py")) + list((ROOT / "worker").rglob("*.py"))
    for path in files:
        text = path.read_text()
        for pattern in _ENV_PATTERNS:
            names |= set(re.findall(pattern, text))
    return (names | Settings.variables()) - _NOT_SETTINGS


def operations_section() -> str:
    match = re.search(r"^## Operations\n(.*?)(?=^## (?!#))", README + "\n## End\n", re.M | re.S)
    assert match, "README has an Operations section"
    return match.group(1)


def test_every_variable_is_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    missing = sorted(variables_read_by_the_code() - documented)
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_every_variable_is_in_the_readme_operations_section() -> None:
    section = operations_section()
    missing = sorted(v for v in variables_read_by_the_code() if f"`{v}`" not in section)
    assert not missing, f"read by the code but not in README's Operations section: {missing}"


def test_the_scan_finds_the_contract_variables() -> None:
    """Guards the scan itself: the contract's own list must be found by it."""
    contract = {
        "APP_ENV",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "SECRET_KEY",
        "JWT_SECRET_KEY",
        "PORT",
        "WEB_CONCURRENCY",
        "LOG_LEVEL",
        "CORS_ORIGINS",
        "RATELIMIT_ENABLED",
        "RATELIMIT_ANONYMOUS",
        "RATELIMIT_AUTHENTICATED",
        "RATELIMIT_LOGIN",
        "RATELIMIT_REGISTER",
        "CACHE_ENABLED",
        "CACHE_TTL_SECONDS",
    }
    assert contract <= variables_read_by_the_code()


def _commands(group: click.Group, prefix: str) -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found += _commands(command, path)
        elif getattr(command.callback, "__module__", "").startswith("app."):
            found.append(path)  # ours; Flask-Migrate's and flask-smorest's have their own docs
    return found


def test_every_cli_command_is_in_the_readme(app: Flask) -> None:
    commands = _commands(app.cli, "flask")
    assert "flask users create" in commands
    cli_text = README
    missing = []
    for command in commands:
        *group, leaf = command.split()
        # Listed either whole ("flask cache warm") or as alternatives ("flask cache warm | stats").
        pattern = re.escape(" ".join(group)) + r"[^\n]*\b" + re.escape(leaf) + r"\b"
        if not re.search(pattern, cli_text):
            missing.append(command)
    assert not missing, f"commands missing from README: {missing}"
