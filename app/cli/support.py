"""What the factory registers commands with: a stand-in for a command whose module is heavy, and
database errors turned into one plain line instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import click
from flask import current_app, has_app_context
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from app.core.redaction import mask_text


class LazyCommand(click.Command):
    """Listed by `flask --help` (its name, one line of help) without importing anything; the
    real command is loaded when it runs, shows its own help or completes: click makes every
    subcommand's context through `make_context`, and the context names the real command."""

    def __init__(
        self,
        name: str | None,
        *,
        help: str | None,  # click's own parameter name
        load: Callable[[], click.Command],
        short_help: str | None = None,
    ) -> None:
        super().__init__(name, help=help, short_help=short_help)
        self._load = load

    @classmethod
    def standing_in_for(
        cls, command: click.Command, *, load: Callable[[], click.Command]
    ) -> LazyCommand:
        """A stand-in listed with `command`'s own name and help."""
        return cls(command.name, help=command.help, short_help=command.short_help, load=load)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        return self._load().make_context(info_name, args, parent=parent, **extra)


def database_errors_as_text(command: click.Command) -> click.Command:
    """`command` (a group: each of its commands) exiting 1 with `Error: database ...: reason`
    on stderr when the database refuses or cannot be reached, instead of a traceback."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            database_errors_as_text(sub)
    callback = command.callback
    if callback is None or getattr(callback, "database_errors_as_text", False):
        return command  # Flask-Migrate's group is a module global: wrapped once per process

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except DBAPIError as exc:
            raise click.ClickException(describe_database_error(exc)) from None

    guarded.database_errors_as_text = True  # type: ignore[attr-defined]
    command.callback = guarded
    return command


def describe_database_error(exc: DBAPIError) -> str:
    """One line: which database (password hidden), the driver's error class and its words."""
    cause = exc.orig if exc.orig is not None else exc
    reason = " ".join(str(cause).split())  # psycopg puts its hint on a tab-indented second line
    where = ""
    if has_app_context():
        try:
            url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
            where = " " + url.render_as_string(hide_password=True)
        except (ArgumentError, KeyError):
            pass
    return mask_text(f"database{where}: {type(cause).__name__}: {reason}")


def role_loading_the_app() -> Literal["web", "cli"]:
    """The role wsgi.py builds: "cli" when the `flask` command loads the app to find or list
    its commands (every command the app adds: db, users, seed, cache, backfill, openapi);
    "web" otherwise: gunicorn, and Flask's own `run`, `routes` and `shell`, which load the app
    from inside themselves (their own click context) and need its routes."""
    from flask.cli import FlaskGroup

    ctx = click.get_current_context(silent=True)
    return "cli" if ctx is not None and isinstance(ctx.command, FlaskGroup) else "web"
