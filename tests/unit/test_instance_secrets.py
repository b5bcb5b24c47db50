"""Per-instance development secrets (issue #13 item 10): no signing secret is written in the
repository; an instance without SECRET_KEY / JWT_SECRET_KEY generates its own once, under
`instance/`, and every process on that instance directory uses the same ones. Production keeps
refusing weak settings: placeholder or short secrets, `JWT_ALGORITHM=none`, shared secrets."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask_jwt_extended import decode_token

import app.settings as settings_module
from app import create_app
from app.settings import ConfigError, Settings
from app.settings.instance_secrets import instance_secret, secrets_path
from tests.conftest import bearer, login, register, test_config
from tests.live import ROOT, live_server

# The values `make run` signed with before this change: public, so anyone could forge tokens.
OLD_PUBLIC_SECRETS = ("dev-secret-change-me", "dev-jwt-secret-change-me-32-bytes!")
STRONG = "s" * 48


@pytest.fixture
def unset_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SECRET_KEY / JWT_SECRET_KEY in the environment (the test session sets a pair)."""
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "METRICS_TOKEN", "JWT_ALGORITHM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_module, "BASE_DIR", tmp_path)  # no .env there


def dev_app(database_uri: str, instance: Path, **extra: Any) -> Flask:
    """A development app on `instance` with no secret configured (cheap hashing, no limits)."""
    return create_app(
        test_config(
            database_uri,
            APP_ENV="development",
            INSTANCE_PATH=str(instance),
            SECRET_KEY="",  # empty counts as unset: the instance's generated secret applies
            JWT_SECRET_KEY="",
            RATELIMIT_ENABLED=False,
            TASKS_ENABLED=False,
            ARGON2_TIME_COST=1,
            ARGON2_MEMORY_COST_KIB=1024,
            **extra,
        )
    )


def test_a_fresh_instance_gets_its_own_private_secrets(tmp_path: Path, unset_secrets) -> None:
    values = Settings.from_env("development", INSTANCE_PATH=str(tmp_path / "instance"))
    path = secrets_path(tmp_path / "instance")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored == {"SECRET_KEY": values.secret_key, "JWT_SECRET_KEY": values.jwt_secret_key}
    assert len(values.secret_key) >= 64
    assert len(values.jwt_secret_key) >= 64
    assert values.secret_key != values.jwt_secret_key
    assert not set(OLD_PUBLIC_SECRETS) & {values.secret_key, values.jwt_secret_key}
    # Read back, not regenerated; another instance directory has other secrets.
    again = Settings.from_env("testing", INSTANCE_PATH=str(tmp_path / "instance"))
    assert again.jwt_secret_key == values.jwt_secret_key
    other = Settings.from_env("development", INSTANCE_PATH=str(tmp_path / "other"))
    assert other.jwt_secret_key != values.jwt_secret_key
    # A configured secret wins over the file.
    configured = Settings.from_env(INSTANCE_PATH=str(tmp_path / "instance"), SECRET_KEY=STRONG)
    assert configured.secret_key == STRONG


def test_a_damaged_secrets_file_stops_the_start_naming_it(tmp_path: Path, unset_secrets) -> None:
    secrets_path(tmp_path).write_text("{not json")
    with pytest.raises(ConfigError, match=r"secrets\.json"):
        Settings.from_env("development", INSTANCE_PATH=str(tmp_path))


def _read_secret(args: tuple[str, Any]) -> str:
    directory, barrier = args
    barrier.wait()  # every process starts together, on a directory with no file yet
    return instance_secret(Path(directory), "JWT_SECRET_KEY")


def test_processes_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        barrier = manager.Barrier(8)
        with context.Pool(8) as pool:
            found = pool.map(_read_secret, [(str(tmp_path), barrier)] * 8)
    assert len(set(found)) == 1
    assert json.loads(secrets_path(tmp_path).read_text())["JWT_SECRET_KEY"] == found[0]
    assert [p.name for p in tmp_path.iterdir()] == ["secrets.json"]  # no temporary left behind


def test_two_apps_on_one_instance_accept_each_others_tokens(
    app: Flask, tmp_path: Path, unset_secrets
) -> None:
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    first, second = dev_app(uri, tmp_path), dev_app(uri, tmp_path)
    user = register(first.test_client())
    tokens = login(first.test_client(), user["email"])
    me = second.test_client().get("/api/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.json
    # An app on another instance directory has other secrets: the token is not valid there.
    stranger = dev_app(uri, tmp_path / "elsewhere")
    refused = stranger.test_client().get("/api/me", headers=bearer(tokens["access_token"]))
    assert refused.status_code == 401


def test_a_token_signed_with_the_old_public_secret_is_refused(
    app: Flask, tmp_path: Path, unset_secrets
) -> None:
    dev = dev_app(app.config["SQLALCHEMY_DATABASE_URI"], tmp_path)
    client = dev.test_client()
    user = register(client)
    genuine = login(client, user["email"])["access_token"]
    claims = jwt.decode(genuine, options={"verify_signature": False})
    now = datetime.now(UTC)
    claims.update(iat=now, nbf=now, exp=now + timedelta(minutes=5))
    for public in OLD_PUBLIC_SECRETS:
        forged = jwt.encode(claims, public, algorithm="HS256")
        response = client.get("/api/me", headers=bearer(forged))
        assert response.status_code == 401, response.json
        assert response.json["error"]["code"] == "UNAUTHENTICATED"
    assert client.get("/api/me", headers=bearer(genuine)).status_code == 200


def test_gunicorn_workers_and_the_cli_share_the_generated_secrets(
    app: Flask, tmp_path: Path, unset_secrets
) -> None:
    """gunicorn's four workers start together on a fresh instance directory; the CLI, started
    next, creates a user; tokens issued by any worker are valid in every worker and in the app
    as the CLI builds it."""
    instance = tmp_path  # fresh: nothing but the server log in it
    env = {"SECRET_KEY": "", "JWT_SECRET_KEY": "", "WEB_CONCURRENCY": "4"}
    with live_server(app, instance, **env) as (http, _proc):
        email = f"cli-{os.getpid()}-{datetime.now(UTC).timestamp():.0f}@example.com"
        cli_env = {
            **os.environ,
            "APP_ENV": "testing",
            "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "INSTANCE_PATH": str(instance),
            "SECRET_KEY": "",
            "JWT_SECRET_KEY": "",
        }
        command = [sys.executable, "-m", "flask", "--app", "wsgi", "users", "create", email]
        created = subprocess.run(
            [
                *command,
                "--username",
                email.split("@")[0].replace("-", "_")[:30],
                "--password",
                "correct horse battery",
            ],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        status, _, body = http.call(
            "POST", "/api/auth/login", {"email": email, "password": "correct horse battery"}
        )
        assert status == 200, body
        token = body["data"]["access_token"]
        answers = {http.call("GET", "/api/me", headers=bearer(token))[0] for _ in range(16)}
        assert answers == {200}
    stored = json.loads(secrets_path(instance).read_text())
    # This process, on the same directory (as `flask` commands build the app), agrees too.
    here = create_app(
        test_config(
            app.config["SQLALCHEMY_DATABASE_URI"],
            INSTANCE_PATH=str(instance),
            SECRET_KEY="",
            JWT_SECRET_KEY="",
        )
    )
    assert here.config["JWT_SECRET_KEY"] == stored["JWT_SECRET_KEY"]
    with here.app_context():
        assert decode_token(token)["type"] == "access"


# --- production keeps refusing weak settings -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": OLD_PUBLIC_SECRETS[0], "JWT_SECRET_KEY": STRONG}, "SECRET_KEY must"),
        ({"SECRET_KEY": STRONG, "JWT_SECRET_KEY": OLD_PUBLIC_SECRETS[1]}, "JWT_SECRET_KEY must"),
        ({"SECRET_KEY": STRONG, "JWT_SECRET_KEY": STRONG}, "must be different secrets"),
        (
            {"SECRET_KEY": STRONG, "JWT_SECRET_KEY": "j" * 48, "JWT_ALGORITHM": "none"},
            "JWT_ALGORITHM: must be one of HS256, HS384, HS512",
        ),
        (
            {"SECRET_KEY": STRONG, "JWT_SECRET_KEY": "j" * 48, "METRICS_TOKEN": STRONG},
            "must be different secrets",
        ),
        (
            {"SECRET_KEY": STRONG, "JWT_SECRET_KEY": "j" * 48, "METRICS_TOKEN": "short"},
            "METRICS_TOKEN must be at least 32",
        ),
    ],
)
def test_production_refuses_weak_settings(
    tmp_path: Path, unset_secrets, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env("production", INSTANCE_PATH=str(tmp_path), **overrides)
    assert not secrets_path(tmp_path).exists()  # production never generates secrets


def test_jwt_algorithm_none_is_refused_everywhere(tmp_path: Path, unset_secrets) -> None:
    for kind in ("development", "testing"):
        with pytest.raises(ConfigError, match="JWT_ALGORITHM"):
            Settings.from_env(kind, INSTANCE_PATH=str(tmp_path), JWT_ALGORITHM="none")


def test_production_starts_with_distinct_strong_secrets(tmp_path: Path, unset_secrets) -> None:
    values = Settings.from_env(
        "production", INSTANCE_PATH=str(tmp_path), SECRET_KEY=STRONG, JWT_SECRET_KEY="j" * 48
    )
    assert values.production
    assert values.jwt_secret_key == "j" * 48
