"""The Celery entry point: the one Celery app (app.extensions.celery), bound to a Flask app
built with role="worker" (no blueprints, limiter, CORS, compression, metrics hooks or Swagger).

Start a worker with `celery -A worker worker`, beat with `celery -A worker beat`. Tasks stay
thin, in worker/tasks/, calling the domains' services: the web never imports this package (it
publishes by task name), so nothing a worker runs is loaded into a web process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging
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


def _build() -> Celery:
    from app import create_app

    return make_celery(create_app(role="worker"))


celery_app = _build()
app = celery_app
