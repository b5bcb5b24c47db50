"""The Celery app, built from the same config as the web app; tasks run inside an app context.

Start a worker with `celery -A worker worker`, beat with `celery -A worker beat`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun
from flask import Flask

from app.core.context import request_id_var
from app.core.redis_client import celery_transport_options
from worker import metrics as _task_metrics  # noqa: F401  # connects the task-metric signals


def make_celery(flask_app: Flask) -> Celery:
    class AppContextTask(Task):
        abstract = True

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with flask_app.app_context():
                return super().__call__(*args, **kwargs)

    cfg = flask_app.config
    celery: Celery = Celery(flask_app.import_name, task_cls=AppContextTask)
    # Redis re-delivers an unacked task after the visibility timeout: longer than any task runs.
    # A worker restores such tasks when it starts, and in a periodic sweep (kombu 5.7: about every
    # 100 s, unacked_restore_interval x unacked_restore_throttle).
    # Every Redis call of the broker and the result backend is bounded (app/core/redis_client.py).
    celery.conf.update(
        **celery_transport_options(
            cfg["CELERY_BROKER_URL"],
            cfg["CELERY_RESULT_BACKEND"],
            consumer=True,
            visibility_timeout=int(cfg["CELERY_VISIBILITY_TIMEOUT"]),
        ),
        broker_url=cfg["CELERY_BROKER_URL"],
        result_backend=cfg["CELERY_RESULT_BACKEND"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        task_time_limit=300,
        task_soft_time_limit=240,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        worker_hijack_root_logger=False,
        include=[
            "worker.tasks.health",
            "worker.tasks.maintenance",
            "worker.tasks.cache",
            "worker.tasks.backfill",
        ],
        beat_schedule={
            "purge-revoked-tokens": {
                "task": "auth.purge_revoked_tokens",
                "schedule": float(cfg["PURGE_REVOKED_TOKENS_SECONDS"]),
            },
            "warm-cache": {
                "task": "cache.warm",
                "schedule": float(cfg["CACHE_WARM_INTERVAL_SECONDS"] or 10**9),
            },
            "resync-blocklist": {
                "task": "auth.resync_blocklist",
                "schedule": float(cfg["BLOCKLIST_RESYNC_SECONDS"]),
            },
            "purge-idempotency-keys": {
                "task": "idempotency.purge_expired_keys",
                "schedule": float(cfg["IDEMPOTENCY_PURGE_SECONDS"]),
            },
        },
    )
    flask_app.extensions["celery"] = celery
    return celery


@setup_logging.connect
def _json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Worker and beat log JSON lines like the web (a receiver here replaces Celery's setup)."""
    from app.core.logging import configure_logging

    configure_logging(loglevel or "INFO")


@before_task_publish.connect
def _attach_request_id(headers: dict | None = None, **_: Any) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id:
        headers["x_request_id"] = request_id


@task_prerun.connect
def _restore_request_id(task: Task | None = None, **_: Any) -> None:
    request_id = task.request.get("x_request_id") if task is not None else None
    request_id_var.set(request_id)


@task_postrun.connect
def _clear_request_id(**_: Any) -> None:
    request_id_var.set(None)


def _build() -> Celery:
    from app import create_app

    return make_celery(create_app())


celery_app = _build()
app = celery_app
