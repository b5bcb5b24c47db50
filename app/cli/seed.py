"""`flask seed --users N --posts-per-user M [--password P] [--batch-size B]`: bulk demo data.

Both counts are required: a bare `flask seed` is a usage error, never rows nobody asked for.
The seeding itself (app/cli/seeding.py) is imported when the command runs.
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext

BATCH = 2000


@click.command("seed")
@click.option(
    "--users",
    "n_users",
    type=click.IntRange(0, 10_000_000),
    required=True,
    help="How many users to create.",
)
@click.option(
    "--posts-per-user",
    type=click.IntRange(0, 10_000),
    required=True,
    help="How many published posts each of them gets.",
)
@click.option("--password", default=None, help="Password of every seeded user (random if omitted).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 50_000),
    default=BATCH,
    show_default=True,
    help="Users per transaction (their posts and events go in the same one).",
)
@with_appcontext
def seed_command(n_users: int, posts_per_user: int, password: str | None, batch_size: int) -> None:
    """Insert N users with M published posts each, in batched transactions, with a progress bar."""
    from app.cli.seeding import seed

    seed(n_users, posts_per_user, password, batch_size)
