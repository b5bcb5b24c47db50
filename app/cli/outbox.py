"""`flask outbox relay` (the relay process) and `flask outbox status`."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import with_appcontext

if TYPE_CHECKING:
    from app.core.outbox_relay import Relay

# What the commands use is imported when they run: `flask --help` lists them without loading it.


@click.group("outbox", help="The transactional outbox and its relay (the event feed).")
def outbox_cli() -> None:
    """The transactional outbox and its relay (the event feed)."""


@outbox_cli.command("relay")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Events read per claim (default OUTBOX_BATCH_SIZE).",
)
@click.option("--once", is_flag=True, help="One cycle, then exit (prints what it published).")
@with_appcontext
def relay_command(batch_size: int | None, once: bool) -> None:
    """Publish committed events to the broker until SIGTERM or Ctrl-C (the cycle under way
    finishes first). Run as many as you like: they share the shards through leases."""
    from app.core.metrics import multiprocess_dir, remove_dead_process_files
    from app.core.outbox_relay import SignalStop

    config = current_app.config
    if not once and not current_app.testing:
        from app.core.logging import configure_logging

        # A service process, not a terminal's command: JSON lines on stdout like web and worker.
        configure_logging(config["LOG_LEVEL"])
        from app.core.tracing import setup_tracing

        # Its publishes traced too (app/core/tracing.py), exported when an endpoint is set.
        setup_tracing("relay", flask_app=current_app._get_current_object())  # type: ignore[attr-defined]
    if (directory := multiprocess_dir()) is not None:
        # Before the relay makes its metric children: prometheus_client opens its files then.
        os.makedirs(directory, exist_ok=True)
        if not once:
            remove_dead_process_files(directory)  # earlier relays' files; live siblings' stay
    relay = build_relay(batch_size)
    try:
        if once:
            cycle = relay.run_once()
            click.echo(f"published {cycle.published}, dropped {cycle.dropped}, more: {cycle.more}")
            if cycle.error is not None:
                raise click.ClickException(f"publishing failed: {cycle.error!r}")
            return
        stop = SignalStop()

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        relay.run(
            stop,
            poll=float(config["OUTBOX_POLL_SECONDS"]),
            idle_poll=float(config["OUTBOX_IDLE_POLL_SECONDS"]),
        )
    finally:
        relay.engine.dispose()
        from app.core.tracing import flush_tracing

        flush_tracing()


def build_relay(batch_size: int | None = None) -> Relay:
    """A relay on a connection of its own, publishing through the app's Celery app."""
    from sqlalchemy import event

    from app.core.db import sqlite_pragmas
    from app.core.outbox_relay import Relay, celery_publisher, relay_engine
    from app.core.tasks import FEED_TASK
    from app.extensions import celery, db
    from app.settings import settings

    config = current_app.config
    if "celery" not in current_app.extensions:
        celery.init_app(current_app)  # a CLI app binds Celery only for the command that publishes
    engine = relay_engine(db.engine.url, settings().engine_options())
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_pragmas)
    queue = str(config["OUTBOX_QUEUE"])
    return Relay(
        engine,
        celery_publisher(celery, queue, FEED_TASK),
        queue=queue,
        batch_size=batch_size or int(config["OUTBOX_BATCH_SIZE"]),
        lease_seconds=float(config["OUTBOX_LEASE_SECONDS"]),
    )


@outbox_cli.command("status")
@with_appcontext
def status_command() -> None:
    """Events waiting, the oldest one's age, and which relay holds which shard."""
    from app.core.outbox import oldest_pending_age, pending_count, shard_leases
    from app.extensions import db

    with db.engine.connect() as conn:
        pending = pending_count(conn)
        age = oldest_pending_age(conn)
        leases = shard_leases(conn)
    click.echo(f"pending: {pending}")
    click.echo(f"oldest pending: {age:.1f}s")
    click.echo(f"queue: {current_app.config['OUTBOX_QUEUE']}")
    if not leases:
        click.echo("shards held: none")
    for shard, owner, left in leases:
        click.echo(f"shard {shard}: held by {owner} for {left:.1f}s more")
