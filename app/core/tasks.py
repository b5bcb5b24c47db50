"""The one Celery app's machinery: binding it to a Flask app, the task base, beat entries
declared beside their tasks, and the request ids that travel with every task.

`app.extensions.celery` is made (on first use) unbound; `create_app` binds it
(`PostboardCelery.init_app`). Every task runs through `AppTask`: inside the bound app's
context, its session removed after. Publishing by name (`enqueue`) is in app/core/publishing.py,
which imports none of this until a process first publishes.

Brokers (docs/brokers.md): the embedded SQLite one, Redis, or RabbitMQ (amqp://: quorum queues,
publisher confirms). Beat: celery-redbeat's lock in Redis when REDIS_URL is set, so any number
of beats send each periodic task once per period; else the file scheduler, one beat only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Celery, Task
from celery.signals import before_task_publish, task_postrun, task_prerun
from flask import Flask, has_app_context
from kombu import Exchange, Queue

from app.core.context import client_request_id_var, request_id_var
from app.core.redis_client import celery_transport_options

DEFAULT_QUEUE = "celery"  # CELERY_DEFAULT_QUEUE's default
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
QUORUM = {"x-queue-type": "quorum"}
PUBLISHER_CONNECT_TIMEOUT_SECONDS = 2.0  # the web's publish runs on a pool thread: bounded anyway
BEAT_KEY_PREFIX = "postboard:beat:"  # redbeat's schedule, entries and lock (":schedule", ...)
BEAT_MAX_TICK_SECONDS = 30.0
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
        self._apply_schedule()
        app.extensions["celery"] = self

    def periodic_task(self, *, entry: str, every: Schedule, **options: Any) -> Any:
        """`@celery.task(**options)` plus a beat entry `entry` running it every `every(config)`
        seconds: the schedule is declared beside its task."""

        def decorator(fn: Callable[..., Any]) -> Any:
            task = self.task(**options)(fn)
            self.periodic[entry] = (task.name, every)
            if self.flask_app is not None:
                self._apply_schedule()
            return task

        return decorator

    def _apply_schedule(self) -> None:
        """The beat entries, at the bound app's periods, and the beat's tick and lock for them."""
        if self.flask_app is None:
            return
        config = self.flask_app.config
        periods = {entry: float(every(config)) for entry, (_task, every) in self.periodic.items()}
        self.conf.beat_schedule = {
            entry: {"task": self.periodic[entry][0], "schedule": period}
            for entry, period in periods.items()
        }
        self.conf.update(beat_timing(periods.values()))

    def _forget_connections(self) -> None:
        """Drop pools, queues, router and result backend built for the previous configuration."""
        self._pool = None
        # Its queues and router keep the settings they were built with (queue type, exchange type).
        self.__dict__.pop("amqp", None)
        self._backend_cache = None
        self._local = threading.local()


def celery_config(cfg: Mapping[str, Any], *, role: str = "web") -> dict[str, Any]:
    """Every Celery setting, from the app's config: the one place to change them."""
    broker_url = str(cfg["CELERY_BROKER_URL"])
    is_redis = broker_url.startswith(("redis://", "rediss://"))
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
    default_queue = str(cfg.get("CELERY_DEFAULT_QUEUE") or DEFAULT_QUEUE)
    feed_queue = str(cfg["OUTBOX_QUEUE"])
    webhooks_queue = str(cfg.get("WEBHOOKS_QUEUE") or "webhooks")
    return {
        "broker_url": broker_url,
        # A worker consumes both by default: tasks, and the event feed the outbox relay publishes
        # (its own queue, so feed consumers can be scaled and watched apart; FIFO per queue).
        "task_default_queue": default_queue,
        "task_queues": tuple(_queue(name, broker_url) for name in (default_queue, feed_queue)),
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
            broker_url,
            cfg["CELERY_RESULT_BACKEND"],
            consumer=role == "worker",
            visibility_timeout=int(cfg["CELERY_VISIBILITY_TIMEOUT"]),
        ),
        **amqp_options(broker_url, consumer=role == "worker", publisher_retry=broker_options),
        **beat_options(cfg),
    }


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ broker URL (amqp://, amqps://, pyamqp://)."""
    return str(url).startswith(AMQP_SCHEMES)


def _queue(name: str, broker_url: str) -> Queue:
    """A work queue: on RabbitMQ a quorum queue (replicated, durable) behind a topic exchange,
    the kind Celery's native delayed delivery (countdowns on quorum queues) can route to."""
    if is_amqp(broker_url):
        return Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments=QUORUM)
    return Queue(name, Exchange(name), routing_key=name)


def amqp_options(broker_url: str, *, consumer: bool, publisher_retry: Mapping[str, Any]) -> dict:
    """RabbitMQ: quorum queues for every queue (the declared ones and those a route or `-Q`
    creates), publisher confirms, and a publisher (web, CLI) that fails fast when the broker
    is away. Nothing for the other brokers. Quorum queues have no priorities, and count each
    message's deliveries against a delivery limit (RabbitMQ 4: 20): see docs/brokers.md."""
    if not is_amqp(broker_url):
        return {}
    options: dict[str, Any] = {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_create_missing_queue_exchange_type": "topic",
        "task_default_exchange_type": "topic",
        # Quorum queues have no global QoS: Celery then sets the prefetch per consumer.
        "worker_detect_quorum_queues": True,
        # A publish returns once RabbitMQ has the message (or raises): none vanish silently.
        "broker_transport_options": {**publisher_retry, "confirm_publish": True},
    }
    if not consumer:
        # A web process never services heartbeats between requests: without them RabbitMQ keeps
        # its idle connection, and a dead one fails the next publish, retried once.
        options.update(
            broker_heartbeat=0,
            broker_connection_timeout=PUBLISHER_CONNECT_TIMEOUT_SECONDS,
            task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        )
    return options


def beat_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """With Redis, beat schedules through celery-redbeat: the schedule and a lock live in Redis,
    so any number of beats send each periodic task once per period (one holds the lock, the
    others wait to take over). Without Redis, Celery's file scheduler: run exactly one beat."""
    redis_url = cfg.get("REDIS_URL")
    if not redis_url:
        return {"beat_scheduler": "celery.beat:PersistentScheduler"}
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": redis_url,
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        # Its own client options (never the broker's): a stalled Redis fails a tick, not hangs it.
        "redbeat_redis_options": {"socket_timeout": 5.0, "socket_connect_timeout": 2.0},
    }


def beat_timing(periods: Iterable[float]) -> dict[str, float]:
    """The beat's tick and lock timeout for these periods (seconds): the lock holder ticks (and
    renews the lock) at least every half shortest period, the lock lasts three ticks so a slow
    tick never loses it, and a standby polls once a tick: a killed holder's place is taken
    within four ticks, two periods of the most frequent task (whose missed runs then collapse
    into one, sent at once)."""
    shortest = min(periods, default=BEAT_MAX_TICK_SECONDS * 2)
    tick = min(BEAT_MAX_TICK_SECONDS, max(1.0, shortest / 2))
    lock = max(3, math.ceil(3 * tick))  # redbeat renews it in whole seconds
    return {"beat_max_loop_interval": tick, "redbeat_lock_timeout": lock}


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
