"""`flask outbox relay` (the relay process) and `flask outbox status`."""

from __future__ import annotations

import os
import signal
from types import FrameType

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import event

from app.core.db import sqlite_pragmas
from app.core.metrics import multiprocess_dir, remove_dead_process_files
from app.core.outbox import oldest_pending_age, pending_count, shard_leases
from app.core.outbox_relay import Relay, SignalStop, celery_publisher, relay_engine
from app.core.tasks import FEED_TASK
from app.extensions import db
from app.settings import settings


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
    config = current_app.config
    relay = build_relay(batch_size)
    try:
        if once:
            cycle = relay.run_once()
            click.echo(f"published {cycle.published}, dropped {cycle.dropped}, more: {cycle.more}")
            if cycle.error is not None:
                raise click.ClickException(f"publishing failed: {cycle.error!r}")
            return
        if (directory := multiprocess_dir()) is not None:
            os.makedirs(directory, exist_ok=True)
            remove_dead_process_files(directory)  # earlier relays' files; live siblings' stay
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


def build_relay(batch_size: int | None = None) -> Relay:
    """A relay on a connection of its own, publishing through the app's Celery app."""
    config = current_app.config
    engine = relay_engine(db.engine.url, settings().engine_options())
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_pragmas)
    queue = str(config["OUTBOX_QUEUE"])
    return Relay(
        engine,
        celery_publisher(current_app.extensions["celery"], queue, FEED_TASK),
        queue=queue,
        batch_size=batch_size or int(config["OUTBOX_BATCH_SIZE"]),
        lease_seconds=float(config["OUTBOX_LEASE_SECONDS"]),
    )


@outbox_cli.command("status")
@with_appcontext
def status_command() -> None:
    """Events waiting, the oldest one's age, and which relay holds which shard."""
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
