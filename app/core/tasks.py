"""The one Celery app's machinery: binding it to a Flask app, the task base, beat entries
declared beside their tasks, and the request ids that travel with every task.

`app.extensions.celery` is made (on first use) unbound; `create_app` binds it
(`PostboardCelery.init_app`). Every task runs through `AppTask`: inside the bound app's
context, its session removed after. Publishing by name (`enqueue`) is in app/core/publishing.py,
which imports none of this until a process first publishes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, Task
from celery.signals import before_task_publish, task_postrun, task_prerun
from flask import Flask, has_app_context
from kombu import Exchange, Queue

from app.core.context import client_request_id_var, request_id_var
from app.core.redis_client import celery_transport_options

DEFAULT_QUEUE = "celery"
FEED_TASK = "events.feed"  # the relay's message: an ordered batch of event JSONs (app/core/feed.py)
# Outbound deliveries: their own queue, consumed by a thread-pool worker of its own (a target
# that takes 10 s holds one thread, not a prefork process the other tasks need).
WEBHOOK_TASKS = "webhooks.*"

# beat entry name -> (task name, the interval in seconds from the app's config)
Schedule = Callable[[Mapping[str, Any]], float]


class AppTask(Task):
    """Runs the task inside its Flask app's context and removes its database session after."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if has_app_context():  # called in-process (a test, `.apply()`): the caller's context
            return super().__call__(*args, **kwargs)
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        if flask_app is None:
            raise RuntimeError("the Celery app is not bound: call create_app first")
        with flask_app.app_context():
            try:
                return super().__call__(*args, **kwargs)
            finally:
                sqlalchemy = flask_app.extensions.get("sqlalchemy")
                if sqlalchemy is not None:
                    sqlalchemy.session.remove()


class PostboardCelery(Celery):
    """A Celery app created unbound, like the other extensions, and bound by `init_app`."""

    flask_app: Flask | None = None

    def __init__(self, main: str) -> None:
        super().__init__(main, task_cls=AppTask)
        self.periodic: dict[str, tuple[str, Schedule]] = {}

    def init_app(self, app: Flask, *, role: str = "web") -> None:
        """Configure from `app.config` (a later app rebinds: tests build several)."""
        if self.flask_app is not None and self.flask_app is not app:
            # Its broker or backend may differ (Celery may also prefer CELERY_BROKER_URL and
            # CELERY_RESULT_BACKEND from the environment to these settings): start afresh.
            self._forget_connections()
        self.flask_app = app
        self.conf.update(celery_config(app.config, role=role))
        self.conf.beat_schedule = {
            entry: {"task": task, "schedule": every(app.config)}
            for entry, (task, every) in self.periodic.items()
        }
        app.extensions["celery"] = self

    def periodic_task(self, *, entry: str, every: Schedule, **options: Any) -> Any:
        """`@celery.task(**options)` plus a beat entry `entry` running it every `every(config)`
        seconds: the schedule is declared beside its task."""

        def decorator(fn: Callable[..., Any]) -> Any:
            task = self.task(**options)(fn)
            self.periodic[entry] = (task.name, every)
            if self.flask_app is not None:
                self.conf.beat_schedule = {
                    **self.conf.beat_schedule,
                    entry: {"task": task.name, "schedule": every(self.flask_app.config)},
                }
            return task

        return decorator

    def _forget_connections(self) -> None:
        """Drop pools and the result backend built for the previous broker and backend."""
        self._pool = None
        amqp = self.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None
        self._backend_cache = None
        self._local = threading.local()


def celery_config(cfg: Mapping[str, Any], *, role: str = "web") -> dict[str, Any]:
    """Every Celery setting, from the app's config: the one place to change them."""
    is_redis = str(cfg["CELERY_BROKER_URL"]).startswith(("redis://", "rediss://"))
    backend_is_redis = str(cfg["CELERY_RESULT_BACKEND"]).startswith(("redis://", "rediss://"))
    # Redis re-delivers an unacked task after the visibility timeout: longer than any task runs.
    # A worker restores such tasks when it starts, and in a periodic sweep (kombu 5.7: about every
    # 100 s, unacked_restore_interval x unacked_restore_throttle).
    redis_options: dict[str, Any] = {"visibility_timeout": int(cfg["CELERY_VISIBILITY_TIMEOUT"])}
    broker_options = dict(redis_options) if is_redis else {}
    if role != "worker":
        # A publisher gives up connecting after one quick retry (kombu reads these as the
        # connection's failover options); a worker keeps retrying its broker.
        broker_options.update(max_retries=1, interval_start=0, interval_step=0.2)
    feed_queue = str(cfg["OUTBOX_QUEUE"])
    webhooks_queue = str(cfg.get("WEBHOOKS_QUEUE") or "webhooks")
    return {
        "broker_url": cfg["CELERY_BROKER_URL"],
        # A worker consumes both by default: tasks, and the event feed the outbox relay publishes
        # (its own queue, so feed consumers can be scaled and watched apart; FIFO per queue).
        "task_default_queue": DEFAULT_QUEUE,
        "task_queues": (
            Queue(DEFAULT_QUEUE, Exchange(DEFAULT_QUEUE), routing_key=DEFAULT_QUEUE),
            Queue(feed_queue, Exchange(feed_queue), routing_key=feed_queue),
        ),
        # Not in task_queues: a plain `celery worker` leaves it to the webhooks worker (-Q).
        "task_routes": {
            FEED_TASK: {"queue": feed_queue},
            WEBHOOK_TASKS: {"queue": webhooks_queue},
        },
        "result_backend": cfg["CELERY_RESULT_BACKEND"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": redis_options if backend_is_redis else {},
        "result_expires": 3600,
        "task_time_limit": 300,
        "task_soft_time_limit": 240,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "worker_hijack_root_logger": False,
        # Socket budgets for every Redis call of the broker and the result backend (these
        # transport options include the visibility timeout and the publisher's retry above).
        **celery_transport_options(
            cfg["CELERY_BROKER_URL"],
            cfg["CELERY_RESULT_BACKEND"],
            consumer=role == "worker",
            visibility_timeout=int(cfg["CELERY_VISIBILITY_TIMEOUT"]),
        ),
    }


# The request ids travel with every task (headers x_request_id, the server's, and
# x_client_request_id, the client's) into the worker's log lines.


@before_task_publish.connect
def _attach_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id and not headers.get("x_request_id"):
        headers["x_request_id"] = request_id
        headers["x_client_request_id"] = client_request_id_var.get()


@task_prerun.connect
def _restore_request_id(task: Task | None = None, **_: Any) -> None:
    request_id = task.request.get("x_request_id") if task is not None else None
    client_request_id = task.request.get("x_client_request_id") if task is not None else None
    request_id_var.set(request_id)
    client_request_id_var.set(client_request_id if request_id else None)


@task_postrun.connect
def _clear_request_id(**_: Any) -> None:
    request_id_var.set(None)
    client_request_id_var.set(None)
