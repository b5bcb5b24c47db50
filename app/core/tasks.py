"""Publishing Celery tasks from the web process and the CLI: by name, with the request id.

The web app never imports the worker package (and its tasks): it publishes by task name through
a producer-only Celery app built from the same settings, one per process.
"""

from __future__ import annotations

import logging
from typing import Any

import pybreaker
from celery import Celery
from flask import current_app

from app.core.context import current_request_id
from app.core.redis_client import broker_breaker, celery_transport_options, skip_redis

log = logging.getLogger(__name__)
_producers: dict[str, Celery] = {}


def producer() -> Celery:
    cfg = current_app.config
    broker = cfg["CELERY_BROKER_URL"]
    app = _producers.get(broker)
    if app is None:
        app = Celery("postboard-producer", broker=broker, backend=cfg["CELERY_RESULT_BACKEND"])
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            **celery_transport_options(broker, cfg["CELERY_RESULT_BACKEND"]),
        )
        _producers[broker] = app
    return app


def enqueue(name: str, *args: Any) -> bool:
    """Publish task `name`; False (logged, never raised) when tasks are off or the broker fails.

    Callers use it from `UnitOfWork.after_commit`, so a task never runs for a rolled-back write.
    """
    if not current_app.config.get("TASKS_ENABLED", True):
        return False
    try:
        # The breaker: while the broker is down a write skips the publish instead of paying a
        # timeout. ignore_result: the web never reads a result, so no result subscription.
        breaker = broker_breaker(current_app.config["CELERY_BROKER_URL"])
        if skip_redis(breaker):
            return False  # the broker failed just now: this follow-up is lost, as on a failure
        with breaker.calling():
            producer().send_task(
                name,
                args=list(args),
                headers={"x_request_id": current_request_id()},
                ignore_result=True,
            )
        return True
    except pybreaker.CircuitBreakerError:
        return False  # the broker failed just now: this follow-up is lost, as on a failure
    except Exception as exc:  # the write is committed; a lost follow-up must not fail the reply
        log.warning("task_publish_failed", extra={"task": name, "error": type(exc).__name__})
        return False
