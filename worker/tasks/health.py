"""Tasks that prove a worker is consuming the broker, reaching the database, and that a task
lost with its worker is delivered again."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from celery import Task
from flask import current_app

from app.core.context import current_request_id
from app.core.redis_client import get_redis
from app.extensions import celery, db

SLEEP_PREFIX = "postboard:test:sleep"
SLEEP_MAX_SECONDS = 60.0
SLEEP_MARK_TTL = 3600


@celery.task(name="worker.ping")
def ping() -> dict[str, str | None]:
    db.session.execute(sa.text("SELECT 1"))
    return {"status": "pong", "request_id": current_request_id()}


@celery.task(name="worker.sleep", bind=True)
def sleep(self: Task, seconds: float, token: str) -> dict[str, Any]:
    """Sleep (at most a minute), then mark `token` done, once.

    For redelivery checks (a worker killed mid-task, tests/test_cache_workers.py): every run
    counts itself in `<prefix>:<token>:runs`; the mark `<prefix>:<token>` is set only if absent,
    so a run delivered again after its worker died completes the work exactly once in effect.
    Kept in Redis when REDIS_URL is set, else in the disk cache (both expire within an hour).
    """
    key = f"{SLEEP_PREFIX}:{token}"
    worker_name = str(self.request.hostname or "unknown")
    client = get_redis(current_app.config.get("REDIS_URL"))
    if client is not None:
        runs = int(client.incr(f"{key}:runs"))
        client.expire(f"{key}:runs", SLEEP_MARK_TTL)
        time.sleep(min(float(seconds), SLEEP_MAX_SECONDS))
        first = bool(client.set(key, worker_name, nx=True, ex=SLEEP_MARK_TTL))
        done_by = client.get(key)
        done_by = done_by.decode() if isinstance(done_by, bytes) else done_by
    else:
        import diskcache

        with diskcache.Cache(current_app.config["CACHE_DIR"]) as disk:
            runs = int(disk.incr(f"{key}:runs", default=0))
            disk.touch(f"{key}:runs", expire=SLEEP_MARK_TTL)
            time.sleep(min(float(seconds), SLEEP_MAX_SECONDS))
            first = bool(disk.add(key, worker_name, expire=SLEEP_MARK_TTL))
            done_by = disk.get(key)
    return {"token": token, "run": runs, "first": first, "done_by": done_by}
