"""`flask backfill list`, `flask backfill run NAME`, `flask backfill status NAME`."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext

from app.backfill import BackfillError, options_from_config, run_backfill
from app.backfill import models as _models  # noqa: F401  # backfill_runs in the app's metadata
from app.backfill.checkpoint import DONE, RUNNING, AlreadyRunning, LeaseLost, load
from app.backfill.core import BatchReport
from app.backfill.registry import backfills, get_backfill
from app.extensions import db


@click.group("backfill", help="Fill new columns of populated tables, in resumable batches.")
def backfill_cli() -> None:
    """Fill new columns of populated tables, in resumable batches."""


def _get(name: str) -> Any:
    try:
        return get_backfill(name)
    except BackfillError as exc:
        raise click.ClickException(str(exc)) from None


@backfill_cli.command("list")
@with_appcontext
def list_command() -> None:
    """Every declared backfill, with its state and how many rows are still missing."""
    with db.engine.connect() as conn:
        for name, backfill in sorted(backfills().items()):
            saved = load(conn, name)
            state = saved.state if saved else "never run"
            missing = backfill.count_missing(conn)
            click.echo(f"{name}  {state}  missing {missing}  {backfill.description}")


@backfill_cli.command("status")
@click.argument("name")
@with_appcontext
def status_command(name: str) -> None:
    """Checkpoint, progress and rows still missing of one backfill."""
    backfill = _get(name)
    lease = float(current_app.config["BACKFILL_LEASE_SECONDS"])
    with db.engine.connect() as conn:
        saved = load(conn, name)
        missing = backfill.count_missing(conn)
    if saved is None:
        click.echo(f"{name}: never run; {missing} rows missing")
        return
    state = saved.state
    if state == RUNNING and not saved.holder_alive(lease):
        state = "interrupted (its process is gone: `flask backfill run` resumes it)"
    elif state == RUNNING:
        state = f"running ({saved.owner}, heartbeat {saved.heartbeat_age():.0f}s ago)"
    click.echo(
        f"{name}: {state}; {saved.rows_done} rows written in {saved.batches} batches, "
        f"checkpoint after key {saved.last_key}; {missing} rows missing; "
        f"started {saved.started_at.isoformat()}"
        + (f", finished {saved.finished_at.isoformat()}" if saved.finished_at else "")
        + (f"; last error: {saved.error}" if saved.error else "")
    )


@backfill_cli.command("run")
@click.argument("name")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Rows per batch, each its own transaction (default BACKFILL_BATCH_SIZE).",
)
@click.option(
    "--sleep",
    "sleep_seconds",
    type=click.FloatRange(0, 3600),
    default=None,
    help="Seconds to pause between batches, to spare the database (default "
    "BACKFILL_SLEEP_SECONDS).",
)
@with_appcontext
def run_command(name: str, batch_size: int | None, sleep_seconds: float | None) -> None:
    """Run NAME, or resume it from its checkpoint; SIGTERM or Ctrl-C stop it after a batch."""
    backfill = _get(name)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    with db.engine.connect() as conn:
        total = backfill.count_missing(conn)
    try:
        # On a terminal only: elsewhere (CI, a job runner) the per-batch log lines say as much.
        with click.progressbar(
            length=total,
            label=f"backfill {name}",
            file=sys.stderr,
            show_pos=True,
            hidden=not sys.stderr.isatty(),
        ) as bar:

            def advance(report: BatchReport) -> None:
                bar.update(report.rows)

            result = run_backfill(
                backfill,
                db.engine,
                **options_from_config(
                    current_app.config, batch_size=batch_size, sleep_seconds=sleep_seconds
                ),
                stop=stop,
                on_batch=advance,
            )
    except (AlreadyRunning, LeaseLost, BackfillError) as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(
            f"backfill {name} failed: {reason}; its checkpoint is saved, run it again to resume"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = (
        f"{result.rows_written} rows written in {result.batches} batches "
        f"(this walk: {result.rows_done}), checkpoint after key {result.last_key}"
    )
    if result.state != DONE:
        raise click.ClickException(
            f"backfill {name} stopped on request: {summary}; run it again to resume"
        )
    click.echo(f"backfill {name} done: {summary}")
