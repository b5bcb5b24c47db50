"""Operator commands: `flask users ...`, `flask seed`, `flask cache ...`, `flask backfill ...`,
`flask events ...`, `flask outbox ...`, `flask webhooks ...`, `flask oauth clients ...`.

A CLI app (role "cli", app/__init__.py) lists them without loading what they use: these modules
import it inside the commands. A database error ends any of them with one plain line.
"""

from __future__ import annotations

import click
from flask import Flask


def commands() -> list[click.Command]:
    from app.cli.backfill import backfill_cli
    from app.cli.cache import cache_cli
    from app.cli.events import events_cli
    from app.cli.oauth import oauth_cli
    from app.cli.outbox import outbox_cli
    from app.cli.seed import seed_command
    from app.cli.users import users_cli
    from app.cli.webhooks import webhooks_cli

    return [users_cli, seed_command, cache_cli, backfill_cli, events_cli, outbox_cli, webhooks_cli,
            oauth_cli]  # fmt: skip


def register_cli(app: Flask) -> None:
    """All of them, loaded (the web app's CLI, and tests' apps)."""
    from app.cli.support import database_errors_as_text

    for command in commands():
        app.cli.add_command(database_errors_as_text(command))
