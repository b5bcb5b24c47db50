"""Cache tasks: write-through after a write, and warming. Thin: each calls the services."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import shared_task
from flask import current_app
from sqlalchemy.exc import OperationalError

from app.core.cache import app_cache, warm
from app.core.pagination import CursorCodec
from app.core.redis_client import get_redis
from app.extensions import db
from app.posts.service import PostService
from app.users.service import UserService

log = logging.getLogger(__name__)
TRANSIENT = (redis.RedisError, OperationalError, ConnectionError, TimeoutError)


def cache_task(name: str) -> Any:
    """A task retried on transient errors with exponential backoff and jitter."""
    return shared_task(
        name=name,
        autoretry_for=TRANSIENT,
        retry_backoff=True,
        retry_backoff_max=60,
        retry_jitter=True,
        max_retries=5,
    )


def _codec() -> CursorCodec:
    return CursorCodec(current_app.config["SECRET_KEY"])


@cache_task("cache.refresh_user")
def refresh_user(public_id: str) -> bool:
    """Write the user's current state through to the cache (never over a newer one)."""
    try:
        service = UserService(db.session(), codec=_codec(), cache=app_cache())
        return service.refresh_cache(uuid.UUID(public_id))
    finally:
        db.session.remove()


@cache_task("cache.refresh_post")
def refresh_post(public_id: str) -> bool:
    try:
        service = PostService(db.session(), codec=_codec(), cache=app_cache())
        return service.refresh_cache(uuid.UUID(public_id))
    finally:
        db.session.remove()


@cache_task("cache.warm")
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
        db.session.remove()
        if lock is not None:
            lock.release()


@cache_task("cache.refresh_user_post_counts")
def refresh_user_post_counts(public_id: str) -> bool:
    """Write a user's post counts through under the current generation (refused if a newer write
    bumped it meanwhile: that write's own task follows)."""
    try:
        service = PostService(db.session(), codec=_codec(), cache=app_cache())
        limit = int(current_app.config["PAGINATION_EXACT_COUNT_LIMIT"])
        return service.refresh_post_counts(uuid.UUID(public_id), limit=limit)
    finally:
        db.session.remove()
