"""Operator CLI: `flask users create` and `flask seed`; the CLI app's commands and errors."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from app import create_app
from app.cli.support import describe_database_error
from app.extensions import db
from tests.factories import login
from tests.support.backends import test_config


def _count(app, table: str) -> int:
    with app.app_context():
        count = db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        db.session.remove()
        return count


def test_users_create_then_login(app, client):
    result = app.test_cli_runner().invoke(
        args=[
            "users",
            "create",
            "Root@Example.com",
            "--username",
            "root",
            "--password",
            "s3cret-password",
            "--admin",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "created admin root <root@example.com>" in result.output
    tokens = login(client, "root@example.com", "s3cret-password")
    import jwt

    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["scope"] == [
        "profile", "users:write", "posts:write", "drafts:read", "webhooks", "admin"
    ]  # fmt: skip


def test_users_create_prompts_for_password(app, client):
    result = app.test_cli_runner().invoke(
        args=["users", "create", "p@example.com", "--username", "prompted"],
        input="long-enough-pw\nlong-enough-pw\n",
    )
    assert result.exit_code == 0, result.output
    assert "long-enough-pw" not in result.output.split("\n")[-2]
    login(client, "p@example.com", "long-enough-pw")


def test_users_create_rejects_bad_input_with_one_line(app):
    runner = app.test_cli_runner()
    bad = runner.invoke(
        args=["users", "create", "not-an-email", "--username", "x", "--password", "p"]
    )
    assert bad.exit_code != 0
    assert "email" in bad.output
    assert "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    ok = runner.invoke(
        args=["users", "create", "a@example.com", "--username", "dup", "--password", "password-1"]
    )
    assert ok.exit_code == 0
    dup = runner.invoke(
        args=["users", "create", "A@example.com", "--username", "other", "--password", "password-1"]
    )
    assert dup.exit_code != 0
    assert "already taken" in dup.output
    assert _count(app, "users") == 1


def test_seed_inserts_users_posts_and_their_events(app, client):
    result = app.test_cli_runner().invoke(
        args=[
            "seed",
            "--users",
            "25",
            "--posts-per-user",
            "3",
            "--password",
            "seeded-pass",
            "--batch-size",
            "10",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "seeded 25 users and 75 posts" in result.output
    assert _count(app, "users") == 25
    assert _count(app, "posts") == 75
    assert _count(app, "events") == 100
    listing = client.get("/api/posts?per_page=100").get_json()
    assert listing["meta"]["total"] == 75
    with app.app_context():
        email = db.session.execute(sa.text("SELECT email FROM users LIMIT 1")).scalar_one()
        db.session.remove()
    login(client, email, "seeded-pass")


def test_seed_rejects_bad_counts(app):
    result = app.test_cli_runner().invoke(args=["seed", "--users", "-1"])
    assert result.exit_code != 0
    assert _count(app, "users") == 0


def test_seed_without_counts_is_a_usage_error_and_writes_nothing(app):
    """README and `--help` write both counts as required: a bare `flask seed` seeds nothing."""
    runner = app.test_cli_runner()
    for args in (["seed"], ["seed", "--users", "3"], ["seed", "--posts-per-user", "2"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 2, result.output
        assert "Missing option" in result.output
    assert _count(app, "users") == 0
    help_text = runner.invoke(args=["seed", "--help"]).output
    assert "--users INTEGER RANGE" in help_text
    assert help_text.count("required]") == 2


def test_seed_with_zero_users_is_allowed_and_says_so(app):
    result = app.test_cli_runner().invoke(args=["seed", "--users", "0", "--posts-per-user", "5"])
    assert result.exit_code == 0, result.output
    assert "seeded 0 users and 0 posts" in result.output


@pytest.fixture
def cli_app(app, database_uri):
    """The app `flask` builds for its commands (role "cli"), on the test database."""
    return create_app(test_config(database_uri), role="cli")


def test_the_cli_app_lists_the_web_apps_commands_with_the_same_help(app, cli_app):
    web = {name: command.get_short_help_str() for name, command in app.cli.commands.items()}
    cli = {name: command.get_short_help_str() for name, command in cli_app.cli.commands.items()}
    assert cli == web


def test_the_cli_app_runs_our_commands(cli_app):
    runner = cli_app.test_cli_runner()
    created = runner.invoke(
        args=[
            "users",
            "create",
            "cli@example.com",
            "--username",
            "cliuser",
            "--password",
            "pw-long-1",
        ]
    )
    assert created.exit_code == 0, created.output
    assert "created user cliuser <cli@example.com>" in created.output
    assert "post_slugs" in runner.invoke(args=["backfill", "list"]).output


def test_a_database_error_is_described_without_its_password(app):
    with app.app_context():
        saved = app.config["SQLALCHEMY_DATABASE_URI"]
        app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://op:hunter2-pw@db:5432/x"
        try:
            text = describe_database_error(OperationalError("x", {}, OSError("password=hunter2")))
        finally:
            app.config["SQLALCHEMY_DATABASE_URI"] = saved
    assert "hunter2" not in text
    assert text.startswith("database postgresql+psycopg://op:***@db:5432/x: OSError: ")
