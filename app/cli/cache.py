"""`flask cache warm [--limit N]`, `flask cache stats`, `flask cache clear`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import with_appcontext

if TYPE_CHECKING:
    from app.core.cache import Cache


def app_cache() -> Cache:
    """The app's cache (imported here: `flask --help` lists this group without loading it)."""
    from app.core.cache import app_cache as the_cache

    return the_cache()


@click.group("cache", help="Inspect and manage the read cache.")
def cache_cli() -> None:
    """Inspect and manage the read cache."""


def _require_enabled() -> None:
    if not app_cache().enabled:
        raise click.ClickException("the cache is disabled (CACHE_ENABLED=false)")


@cache_cli.command("warm")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="How many recent users and posts (default CACHE_WARM_LIMIT).",
)
@with_appcontext
def warm_command(limit: int | None) -> None:
    """Cache the most recent users and posts, in pipelined batches."""
    _require_enabled()
    from app.core.cache_warming import warm
    from app.extensions import db

    limit = limit or int(current_app.config["CACHE_WARM_LIMIT"])
    result = warm(app_cache(), db.session(), limit=limit)
    click.echo("warmed " + " and ".join(f"{count} {name}" for name, count in result.items()))


@cache_cli.command("stats")
@with_appcontext
def stats_command() -> None:
    """Hit and miss counts (all processes) and this service's key count."""
    _require_enabled()
    stats = app_cache().stats()
    total = stats["hits"] + stats["misses"]
    ratio = f"{stats['hits'] / total:.1%}" if total else "n/a"
    click.echo(
        f"hits {stats['hits']}  misses {stats['misses']}  hit ratio {ratio}  keys {stats['keys']}"
    )


@cache_cli.command("clear")
@with_appcontext
def clear_command() -> None:
    """Remove this service's cache keys (and only those)."""
    _require_enabled()
    click.echo(f"removed {app_cache().clear()} keys")
