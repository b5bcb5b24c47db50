"""Publishing a task by name, from the web and the CLI: bounded in time, and never failing the
caller because the broker is down. The web never imports the worker package.

Celery itself is imported when a process first publishes (app.extensions makes it on first
use): a CLI command that never publishes never pays for it; the web binds it at start.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as PublishTimeout
from typing import TYPE_CHECKING, Any

from flask import current_app

from app.core.context import current_client_request_id, current_request_id

if TYPE_CHECKING:
    from app.core.tasks import PostboardCelery

log = logging.getLogger(__name__)

# Publishing from a request: at most one quick retry in kombu; and whatever the transport's
# client does underneath (redis-py 8 retries with backoff for seconds), the reply waits at most
# PUBLISH_TIMEOUT, and after a failure publishing is skipped for PUBLISH_COOLDOWN (the tombstone
# already keeps reads correct; a skipped write-through only costs a later cache miss).
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
PUBLISH_TIMEOUT = 0.5
PUBLISH_COOLDOWN = 5.0


def enqueue(name: str, *args: Any, queue: str | None = None) -> bool:
    """Publish task `name` through the one Celery app (on `queue`, else where the task routes
    send it); False (logged, never raised) when tasks are off or the broker fails or is slow.
    The event handlers call it after the commit, so a task never runs for a rolled-back write."""
    if not current_app.config.get("TASKS_ENABLED", True):
        return False
    from app.extensions import celery  # made and bound here when a CLI publishes first

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if celery.flask_app is not app:  # not bound yet (CLI), or several apps in one process (tests)
        celery.init_app(app, role=app.extensions.get("role", "web"))
    return _publisher.publish(celery, name, list(args), current_request_id(), queue=queue)


class Publisher:
    """Publishes on a small thread pool of this process so that a caller waits a bounded time,
    and skips publishing for a cool-down after a failure (a dead broker costs one timeout)."""

    def __init__(self, timeout: float, cooldown: float) -> None:
        self.timeout = timeout
        self.cooldown = cooldown
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._down_until: dict[str, float] = {}  # broker URL -> end of its cool-down
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():  # a forked child starts its own
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="publish")
                self._pid = os.getpid()
            return self._pool

    def publish(
        self,
        celery: PostboardCelery,
        name: str,
        args: list[Any],
        request_id: str | None,
        *,
        queue: str | None = None,
    ) -> bool:
        broker = str(celery.conf.broker_url)
        if time.monotonic() < self._down_until.get(broker, 0.0):
            log.warning("task_publish_skipped", extra={"task": name, "reason": "broker down"})
            return False
        # In the caller's context (its current span: the publish continues the request's trace).
        send = self._executor().submit(
            contextvars.copy_context().run,
            celery.send_task,
            name,
            args=args,
            queue=queue,  # None: wherever the task routes send it
            headers={
                "x_request_id": request_id,
                "x_client_request_id": current_client_request_id(),
            },
            ignore_result=True,  # the web never reads a result: no per-task result subscription
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
        try:
            send.result(timeout=self.timeout)
            return True
        except Exception as exc:  # the write is committed; a lost follow-up must not fail it
            self._down_until[broker] = time.monotonic() + self.cooldown
            error = "timeout" if isinstance(exc, PublishTimeout) else type(exc).__name__
            log.warning("task_publish_failed", extra={"task": name, "error": error})
            return False


_publisher = Publisher(PUBLISH_TIMEOUT, PUBLISH_COOLDOWN)
