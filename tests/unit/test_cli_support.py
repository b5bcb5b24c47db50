"""The CLI's own pieces on their own: the plain-text log formatter (masked like the JSON one),
the stand-in command that `flask --help` lists without loading, and database errors as one line.
Real `flask` processes are in tests/system/test_cli_startup.py."""

from __future__ import annotations

import io
import logging

import click
import jwt
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

from app.cli.support import LazyCommand, database_errors_as_text
from app.core.cli_logging import cli_handler
from tests.factories import WRONG_KEY
from tests.support.logs import secret


def _line(**extra: object) -> str:
    stream = io.StringIO()
    logger = logging.getLogger("tests.cli_logging")
    logger.propagate = False
    logger.handlers[:] = [cli_handler(stream)]
    logger.setLevel(logging.INFO)
    try:
        message = extra.pop("message", "backfill_done")
        logger.warning(message, extra=extra)
    finally:
        logger.handlers[:] = []
    return stream.getvalue()


def test_a_plain_line_has_level_logger_message_and_extras() -> None:
    line = _line(backfill="post_slugs", rows_done=3)
    assert line.endswith(
        " WARNING tests.cli_logging: backfill_done backfill=post_slugs rows_done=3\n"
    )
    assert not line.startswith("{")


def test_a_plain_line_masks_secrets_like_the_json_one() -> None:
    token = jwt.encode({"sub": secret("sub")}, WRONG_KEY, algorithm="HS256")
    password = secret("pw")
    line = _line(message=f"login with Bearer {token}", password=password, url=f"x?token={token}")
    assert password not in line
    assert token.split(".")[1] not in line
    assert "password=[REDACTED]" in line


def test_the_stand_in_is_listed_with_its_help_and_loads_only_when_used() -> None:
    loaded: list[str] = []

    @click.command("real")
    @click.option("--n", type=int, required=True)
    def real(n: int) -> None:
        """Do the real thing. With more text."""
        click.echo(f"ran {n}")

    def load() -> click.Command:
        loaded.append("real")
        return real

    group = click.Group("cli")
    group.add_command(LazyCommand.standing_in_for(real, load=load))
    runner = CliRunner()
    listing = runner.invoke(group, ["--help"])
    assert "real  Do the real thing." in listing.output
    assert loaded == []
    assert runner.invoke(group, ["real", "--n", "4"]).output == "ran 4\n"
    assert loaded == ["real"]
    usage = runner.invoke(group, ["real"])  # the real command's own options and errors
    assert usage.exit_code == 2
    assert "Missing option '--n'" in usage.output


def test_a_database_error_ends_a_command_with_one_plain_line() -> None:
    @click.command("touch")
    def touch() -> None:
        raise OperationalError("SELECT 1", {}, OSError("connection refused\n\tIs it running?"))

    result = CliRunner().invoke(database_errors_as_text(touch), [])
    assert result.exit_code == 1
    assert result.output == "Error: database: OSError: connection refused Is it running?\n"


def test_wrapping_twice_wraps_once() -> None:
    @click.command("noop")
    def noop() -> None:
        """Nothing."""

    once = database_errors_as_text(noop).callback
    assert database_errors_as_text(noop).callback is once
