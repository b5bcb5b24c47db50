"""Logging for the `flask` CLI: plain text on stderr, for the operator reading a terminal.

    10:02:12 INFO app.backfill: backfill_done backfill=post_slugs rows_done=0
    10:02:13 ERROR flask_migrate: Error: Can't locate revision identified by 'nosuchrev'

A command's own output (what it prints with `click.echo`) is on stdout, so `flask ... > file`
keeps only that. JSON lines (app/core/logging.py) are for the long-running web and worker
processes, whose output a log collector reads. Secrets are masked here as there
(app/core/redaction.py). No third-party import: a CLI call stays quick.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from app.core.redaction import mask_text, redact

# Everything a LogRecord carries by itself: the rest came from `extra=` and is shown as key=value.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}
# werkzeug's access log and alembic's plugin narration say nothing an operator needs; alembic's
# "Running upgrade 0006 -> 0007" lines (alembic.runtime.migration) are kept: they are the point,
# but not the two lines it opens every command with.
_QUIET = ("werkzeug", "alembic.runtime.plugins")
_ALEMBIC_PREAMBLE = ("Context impl ", "Will assume ")


def _not_alembic_preamble(record: logging.LogRecord) -> bool:
    return not (
        record.name == "alembic.runtime.migration" and str(record.msg).startswith(_ALEMBIC_PREAMBLE)
    )


class PlainFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...`, with secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  # logging.Formatter's
        line = super().formatMessage(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:  # before the traceback, if any (`format` appends that after this)
            line += " " + " ".join(f"{key}={value}" for key, value in redact(extras).items())
        return line

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))


def cli_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing plain-text lines to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(PlainFormatter())
    handler.addFilter(_not_alembic_preamble)
    return handler


def configure_cli_logging(level: str | int = "INFO") -> None:
    """Every logger's records as plain text on stderr: the root logger's only handler."""
    root = logging.getLogger()
    root.handlers[:] = [cli_handler()]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
