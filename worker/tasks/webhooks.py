"""Webhook delivery tasks, on WEBHOOKS_QUEUE (a thread-pool worker of its own: `celery -A worker
worker -Q webhooks -P threads`): `webhooks.drain` delivers one target's due deliveries in order
(app/webhooks/dispatch.py); beat's `webhooks.sweep` enqueues drains for targets with deliveries
due (retries whose time came, drains whose message was lost)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Task
from sqlalchemy.exc import OperationalError

from app.extensions import celery
from app.webhooks.dispatch import drain, due_targets

log = logging.getLogger(__name__)
DRAIN_TASK = "webhooks.drain"
SWEEP_SECONDS = 5.0
# Later retries are left to the sweep: a countdown is held in a worker's memory (and on Redis
# must stay under the visibility timeout).
MAX_COUNTDOWN_SECONDS = 60.0


@celery.task(
    name=DRAIN_TASK,
    bind=True,
    ignore_result=True,  # nobody reads it: no result-backend write per drain
    # The database or the lease store is away: try again later (the sweep would, too).
    autoretry_for=(redis.RedisError, OperationalError),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=10,
)
def drain_webhook(self: Task, webhook_public_id: str) -> dict[str, Any]:
    """Deliver what is due for one webhook; re-schedule itself when more will be due."""
    result = drain(uuid.UUID(webhook_public_id))
    if result.again_in is not None and result.again_in <= MAX_COUNTDOWN_SECONDS:
        self.apply_async(args=(webhook_public_id,), countdown=max(0.0, result.again_in))
    if result.skipped_open:
        log.info("webhook_drain_skipped", extra={"webhook": webhook_public_id, "reason": "open"})
    return result.summary()


@celery.periodic_task(
    entry="webhooks-sweep",
    every=lambda _config: SWEEP_SECONDS,
    name="webhooks.sweep",
    ignore_result=True,
    autoretry_for=(redis.RedisError, OperationalError),
    max_retries=0,
)
def sweep() -> int:
    """Enqueue a drain for each webhook with a delivery due and no drain running (idempotent:
    a drain that finds its target held or nothing due returns at once)."""
    targets = due_targets()
    for public_id in targets:
        drain_webhook.apply_async(args=(str(public_id),))
    if targets:
        log.info("webhooks_swept", extra={"targets": len(targets)})
    return len(targets)
