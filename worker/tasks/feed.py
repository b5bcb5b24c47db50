"""`events.feed`: one ordered batch of the event feed, as the outbox relay published it, handed
to the feed consumers (app/events/feed.py) with deduplication by event id (app/core/feed.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Task
from sqlalchemy.exc import OperationalError

from app.core.feed import consume
from app.core.tasks import FEED_TASK
from app.extensions import celery

log = logging.getLogger(__name__)
BUSY_RETRY_SECONDS = 30  # another delivery holds some events: look again once it is likely done


@celery.task(
    name=FEED_TASK,
    bind=True,
    # The dedupe store or a consumer's dependency is away: retried; the events already done
    # are skipped on the retry.
    autoretry_for=(redis.RedisError, OperationalError, ConnectionError, TimeoutError),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=20,
)
def feed(self: Task, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run the consumers on what they have not seen of `events`; retry later for the events
    another delivery is processing (if that one dies, its claims expire and this takes them)."""
    result = consume(events, delivery=str(self.request.id))
    if result.busy:
        log.info("feed_events_busy", extra={"events": result.busy})
        raise self.retry(countdown=BUSY_RETRY_SECONDS)
    return {"events": len(events), "processed": result.processed, "duplicates": result.duplicates}
