"""Cache tasks: write-through after a write, and warming. Thin: each calls the services."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import redis
from flask import current_app
from sqlalchemy.exc import OperationalError

from app.core.cache import app_cache
from app.core.cache_warming import warm
from app.core.redis_client import get_redis
from app.extensions import celery, db
from app.posts.service import PostService
from app.users.service import UserService

log = logging.getLogger(__name__)
TRANSIENT = (redis.RedisError, OperationalError, ConnectionError, TimeoutError)
# Retried on transient errors with exponential backoff and jitter.
RETRIED: Mapping[str, Any] = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}


@celery.task(name="cache.refresh_user", **RETRIED)
def refresh_user(public_id: str) -> bool:
    """Write the user's current state through to the cache (never over a newer one)."""
    return UserService.from_app().refresh_cache(uuid.UUID(public_id))


@celery.task(name="cache.refresh_post", **RETRIED)
def refresh_post(public_id: str) -> bool:
    return PostService.from_app().refresh_cache(uuid.UUID(public_id))


@celery.task(name="cache.refresh_user_post_counts", **RETRIED)
def refresh_user_post_counts(public_id: str) -> bool:
    """Write a user's post counts through under the current generation (refused if a newer write
    bumped it meanwhile: that write's own task follows)."""
    limit = int(current_app.config["PAGINATION_EXACT_COUNT_LIMIT"])
    return PostService.from_app().refresh_post_counts(uuid.UUID(public_id), limit=limit)


@celery.periodic_task(
    entry="warm-cache",
    every=lambda config: float(config["CACHE_WARM_INTERVAL_SECONDS"] or 10**9),
    name="cache.warm",
    **RETRIED,
)
def warm_cache(limit: int | None = None) -> dict[str, int]:
    """Warm the most recent users and posts; beat runs it, one at a time (a Redis lock)."""
    limit = int(limit if limit is not None else current_app.config["CACHE_WARM_LIMIT"])
    client = get_redis(current_app.config.get("REDIS_URL"))
    lock = client.lock("postboard:lock:cache-warm", timeout=300, blocking=False) if client else None
    if lock is not None and not lock.acquire():
        log.info("cache_warm_skipped", extra={"reason": "another warm is running"})
        return {"users": 0, "posts": 0}
    try:
        result = warm(app_cache(), db.session(), limit=limit)
        log.info("cache_warmed", extra=result)
        return result
    finally:
        if lock is not None:
            lock.release()
