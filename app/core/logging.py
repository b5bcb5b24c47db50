"""One JSON object per log line, from every logger in the process, with secrets masked.

structlog's stdlib `ProcessorFormatter` renders the records of every library (gunicorn, Celery,
SQLAlchemy, alembic, our own `logging.getLogger(...)` calls with `extra=`) and of structlog's
own loggers the same way:

    {"timestamp": "2026-11-21T04:12:00.123456Z", "level": "info", "logger": "app.access",
     "event": "request", "request_id": "...", "method": "GET", "path": "/api/posts", ...}

`request_id` comes from the request (or task) being served (`app.core.context`), `trace_id` and
`span_id` from its current span (app/core/tracing.py); a Celery task's lines also carry
`task_name` and `task_id`. Redaction is the last step before rendering, so it
holds whatever a caller passes: values under secret-looking keys (password, token,
authorization, secret, cookie, ...; nested too) become "[REDACTED]", and JWTs, `Bearer ...`
credentials and `password=...`-style pairs are masked inside any string, the message included
(app/core/redaction.py, shared with the CLI's plain-text lines).

Every record goes through structlog's own chain; what keeps it cheap is a short chain and a
redaction that returns strings without anything the masking patterns could match as they are,
after a cheap check.

Entry points: `configure_logging(level)` (web factory, Celery worker and beat), and
`gunicorn_logconfig_dict(level)` for gunicorn's own loggers (`logconfig_dict` in
gunicorn.conf.py), which builds the same handler. The `flask` CLI writes plain text to stderr
instead (app/core/cli_logging.py).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from app.core.context import current_client_request_id, current_request_id

# Re-exported: this module was their home, and its tests and callers import them from here.
from app.core.redaction import REDACTED as REDACTED
from app.core.redaction import is_secret_key as is_secret_key
from app.core.redaction import mask_text as mask_text
from app.core.redaction import redact

# LogRecord attributes that are not context: formatting leftovers from other handlers.
_NOISE = frozenset({"message", "asctime", "color_message", "taskName"})
_FIRST = ("timestamp", "level", "logger", "event", "request_id")
# Loggers kept at WARNING: werkzeug's access log would repeat ours in another format; alembic
# narrates every plugin and migration step it loads.
_QUIET = ("werkzeug", "alembic.runtime.plugins", "alembic.runtime.migration")


def _redact_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return cast(EventDict, redact(event_dict))


def _add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """`request_id` is the id the response carried (contract §7: the client's when it sent a
    well-formed one, else the server's); `server_request_id`, the one events are keyed by, goes
    beside it when the two differ."""
    if not event_dict.get("request_id"):
        server, client = current_request_id(), current_client_request_id()
        if client or server:
            event_dict["request_id"] = client or server
        else:
            event_dict.pop("request_id", None)
        if client and server:
            event_dict["server_request_id"] = server
    return event_dict


def _add_trace(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """`trace_id` and `span_id` of the current span (app/core/tracing.py: the request's, or the
    task's, which continues the request's trace); nothing where tracing was never set up."""
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:  # the CLI never loads it
        return event_dict
    context = otel.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _add_task(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Inside a Celery task: its name and id (Celery's own TaskFormatter reads the same)."""
    if "celery" not in sys.modules:  # the web and the CLI never pay for it
        return event_dict
    from celery import current_task

    task = current_task
    if task and task.request.id:
        event_dict.setdefault("task_name", task.name)
        event_dict.setdefault("task_id", task.request.id)
    return event_dict


def _drop_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _NOISE & event_dict.keys():
        del event_dict[key]
    return event_dict


def _order(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
    ordered.update(event_dict)
    return ordered


_timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")

# Applied to records from `logging` (everything but structlog's own loggers).
_FOREIGN_PRE_CHAIN: list[Processor] = [
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(),
    _timestamper,
]
# Applied to every line (after remove_processors_meta), then redaction, order and rendering.
_CONTEXT: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    _add_request_id,
    _add_trace,
    _add_task,
    _drop_noise,
    structlog.processors.format_exc_info,
)
_PROCESSORS: list[Processor] = [
    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    *_CONTEXT,
    _redact_event,  # last before rendering: nothing added after it escapes redaction
    _order,
    structlog.processors.JSONRenderer(sort_keys=False, default=str),
]


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """The one formatter: a `logging.Formatter`, so gunicorn's dictConfig can name it too."""

    def __init__(self) -> None:
        super().__init__(foreign_pre_chain=_FOREIGN_PRE_CHAIN, processors=_PROCESSORS)


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing one JSON line per record to `stream` (stdout by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter())
    return handler


def _configure_structlog() -> None:
    """structlog's own loggers (`structlog.get_logger()`) go through the same handler."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            _timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _quiet_libraries() -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str | int = "INFO") -> None:
    """Send every logger's records, as JSON lines, to stdout: the root logger's only handler.

    Idempotent: the web factory, Celery's `setup_logging` signal and the CLI may each call it.
    """
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # gunicorn and Celery attach handlers of their own: let their records reach ours instead.
    for name in ("gunicorn.error", "gunicorn.access", "celery", "celery.task"):
        library = logging.getLogger(name)
        library.handlers[:] = []
        library.propagate = True
    logging.captureWarnings(True)  # warnings too, as JSON lines (logger "py.warnings")
    _configure_structlog()
    _quiet_libraries()


def gunicorn_logconfig_dict(level: str = "info") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its master's and workers' lines as our JSON, on stdout."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            # With a logconfig_dict gunicorn writes access lines; the app's own (app.access,
            # with request id, route and duration) replaces them.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            **{name: {"level": "WARNING"} for name in _QUIET},
        },
    }
