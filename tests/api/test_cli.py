"""Operator CLI: `flask users create` and `flask seed`."""

from __future__ import annotations

import sqlalchemy as sa

from app.extensions import db
from tests.factories import login


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
    assert claims["scope"] == ["admin"]


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
