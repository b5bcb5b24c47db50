"""The Celery entry point: the one Celery app (app.extensions.celery), bound to a Flask app
built with role="worker" (no blueprints, limiter, CORS, compression, metrics hooks or Swagger).

Start a worker with `celery -A worker worker`, beat with `celery -A worker beat`. Tasks stay
thin, in worker/tasks/, calling the domains' services: the web never imports this package (it
publishes by task name), so nothing a worker runs is loaded into a web process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from flask import Flask

from worker import metrics as _task_metrics  # noqa: F401  # connects the task-metric signals
from worker.tasks import (  # noqa: F401  # registers the tasks
    backfill,
    cache,
    feed,
    health,
    maintenance,
    webhooks,
)


def make_celery(flask_app: Flask) -> Celery:
    """The one Celery app, (re)bound to `flask_app` (tests bind it to an app of their own)."""
    from app.extensions import celery

    celery.init_app(flask_app, role=flask_app.extensions.get("role", "web"))
    return celery


@setup_logging.connect
def _json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Worker and beat log JSON lines like the web (a receiver here replaces Celery's setup)."""
    from app.core.logging import configure_logging

    configure_logging(loglevel or "INFO")


# Tracing (app/core/tracing.py) is set up where tasks run, after any fork: in each prefork
# child, or in the worker itself for the solo and threads pools (the webhooks worker); and in beat.


def _bound_app() -> Flask | None:
    from app.extensions import celery

    return celery.flask_app


@worker_process_init.connect
def _trace_prefork_child(**_: Any) -> None:
    from app.core.tracing import setup_tracing

    setup_tracing("worker", flask_app=_bound_app())


@worker_init.connect
def _trace_worker(sender: Any = None, **_: Any) -> None:
    from celery.concurrency import get_implementation

    from app.core import tracing

    if tracing.disabled():
        return
    pool = get_implementation(sender.pool_cls) if sender is not None else None
    if pool is not None and pool.__module__ == "celery.concurrency.prefork":
        tracing.preload()  # imported once here, set up in each child
        return
    tracing.setup_tracing("worker", flask_app=_bound_app())


@worker_process_shutdown.connect
def _flush_spans(**_: Any) -> None:
    from app.core.tracing import flush_tracing

    flush_tracing()


@beat_init.connect
def _trace_beat(**_: Any) -> None:
    from app.core.tracing import setup_tracing

    setup_tracing("beat", flask_app=_bound_app())


def _build() -> Celery:
    from app import create_app

    return make_celery(create_app(role="worker"))


celery_app = _build()
app = celery_app
