"""`flask events prune --before DATE [--dry-run] [--batch-size N]`: retention of the event log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from flask.cli import with_appcontext

# What the commands use is imported when they run: `flask --help` lists them without loading it.
PRUNE_BATCH = 1000


class Cutoff(click.ParamType):
    """A date (`2026-01-01`, midnight UTC) or a timestamp with an offset, in the past."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        from app.core.db import utcnow
        from app.core.history import parse_instant

        text = str(value).strip()
        try:
            if len(text) == len("2026-01-01"):
                moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
            else:
                moment = parse_instant(text)
        except ValueError:
            self.fail(
                f"{text!r} is not a date (2026-01-01) or a timestamp with an offset "
                "(2026-01-01T12:00:00Z).",
                param,
                ctx,
            )
        if moment > utcnow():
            self.fail(f"{text} is in the future: only past events can be pruned.", param, ctx)
        return moment


@click.group("events", help="The event log (history).")
def events_cli() -> None:
    """The event log (history)."""


@events_cli.command("prune")
@click.option(
    "--before",
    "older_than",
    type=Cutoff(),
    required=True,
    help="Delete events that occurred before this date (UTC midnight) or timestamp.",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=PRUNE_BATCH,
    show_default=True,
    help="Old events looked at per transaction (their users' and posts' whole early history "
    "goes in that transaction).",
)
@with_appcontext
def prune_command(older_than: datetime, dry_run: bool, batch_size: int) -> None:
    """Delete events older than DATE, after writing each user's and post's state at that point
    as a snapshot: `as_of` from then on answers as before; before it, 422."""
    from app.core.retention import Pruner
    from app.extensions import db

    pruner = Pruner(db.session(), older_than, batch=batch_size)
    planned = pruner.count()
    cut = older_than.isoformat()
    if dry_run:
        click.echo(
            f"dry run: {planned.events} events before {cut} would be pruned, from "
            f"{planned.aggregates} users and posts (up to {planned.snapshots} snapshots written)"
        )
        return
    with click.progressbar(length=planned.events, label="pruning events", show_pos=True) as bar:
        report = pruner.run(bar.update)
    skipped = f"; {report.skipped} left whole (a gap in their events)" if report.skipped else ""
    click.echo(
        f"pruned {report.events} events before {cut} from {report.aggregates} users and posts "
        f"({report.snapshots} snapshots written){skipped}"
    )
