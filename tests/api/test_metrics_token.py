"""`/metrics` in production answers only with the configured bearer token (issue #13 item 11,
contract §7): without a token configured every scrape is refused (fail closed), a wrong token is
401, the right one 200. The compose file requires the token and hands it to the web service."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import yaml
from flask import Flask

from app import create_app
from tests.conftest import assert_error, bearer, test_config
from tests.live import ROOT

SIGNING = {"SECRET_KEY": "k" * 48, "JWT_SECRET_KEY": "j" * 48}


def production_app(app: Flask, tmp_path: Path, **extra: Any) -> Flask:
    return create_app(
        test_config(
            app.config["SQLALCHEMY_DATABASE_URI"],
            APP_ENV="production",
            INSTANCE_PATH=str(tmp_path),
            RATELIMIT_ENABLED=False,
            TASKS_ENABLED=False,
            **SIGNING,
            **extra,
        )
    )


def test_production_without_a_token_configured_refuses_every_scrape(
    app: Flask, tmp_path: Path
) -> None:
    client = production_app(app, tmp_path).test_client()
    anonymous = client.get("/metrics")
    assert_error(anonymous, 401, "UNAUTHENTICATED")
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "METRICS_TOKEN" in anonymous.json["error"]["message"]
    assert b"postboard_" not in anonymous.data
    # No value opens it: not an empty bearer, not a guess, not a signing secret.
    for header in (bearer("x"), bearer(SIGNING["SECRET_KEY"]), {"Authorization": "Bearer "}):
        refused = client.get("/metrics", headers=header)
        assert_error(refused, 401, "UNAUTHENTICATED")
        assert b"postboard_" not in refused.data


def test_production_with_a_token_needs_exactly_that_token(app: Flask, tmp_path: Path) -> None:
    token = secrets.token_hex(32)
    client = production_app(app, tmp_path, METRICS_TOKEN=token).test_client()
    assert_error(client.get("/metrics"), 401, "UNAUTHENTICATED")
    wrong = client.get("/metrics", headers=bearer(secrets.token_hex(32)))
    assert_error(wrong, 401, "UNAUTHENTICATED")
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    right = client.get("/metrics", headers=bearer(token))
    assert right.status_code == 200
    assert right.content_type.startswith("text/plain")
    assert b"postboard_http_requests_total" in right.data


def test_development_stays_open_without_a_token(app: Flask) -> None:
    assert app.test_client().get("/metrics").status_code == 200


def test_compose_requires_the_token_and_gives_it_to_the_web() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = compose["services"]["web"]["environment"]
    assert web["APP_ENV"] == "production"
    assert web["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?"), "required, not defaulted"
    assert "METRICS_TOKEN=" in (ROOT / ".env.example").read_text()


def test_the_readme_says_how_to_send_the_token() -> None:
    assert "Authorization: Bearer $METRICS_TOKEN" in (ROOT / "README.md").read_text()
