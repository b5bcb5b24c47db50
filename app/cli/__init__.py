"""Operator commands: `flask users ...`, `flask seed`."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from app.cli.backfill import backfill_cli
    from app.cli.cache import cache_cli
    from app.cli.events import events_cli
    from app.cli.outbox import outbox_cli
    from app.cli.seed import seed_command
    from app.cli.users import users_cli

    app.cli.add_command(users_cli)
    app.cli.add_command(seed_command)
    app.cli.add_command(cache_cli)
    app.cli.add_command(backfill_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(outbox_cli)
