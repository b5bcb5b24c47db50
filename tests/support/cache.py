"""Reading the read cache straight from its backend (Redis when REDIS_URL is set, else the disk
cache in CACHE_DIR), and recording the SQL an app runs: what the cache tests check against."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from flask import Flask
from sqlalchemy import event

from app.core.cache import Cache, app_cache, cache_key
from app.extensions import db
from tests.support.backends import CACHE_DIR, REDIS_URL


def raw_entry(kind: str, public_id: object, *, redis_url: str | None = REDIS_URL) -> bytes | None:
    """The bytes stored for one resource, read straight from the backend (not through Cache)."""
    key = cache_key(kind, public_id)
    if redis_url:
        client = redis.Redis.from_url(redis_url)
        try:
            return client.get(key)  # type: ignore[return-value]
        finally:
            client.close()
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        value = disk.get(key)
    assert value is None or isinstance(value, bytes), value
    return value


def entry(kind: str, public_id: object, *, redis_url: str | None = REDIS_URL) -> dict | None:
    """The stored entry, its MAC aside (tests/api/test_cache_integrity.py covers the MAC)."""
    raw = raw_entry(kind, public_id, redis_url=redis_url)
    if raw is None:
        return None
    stored = json.loads(raw)
    assert isinstance(stored.pop("m", None), str), "every entry carries its MAC"
    return stored


def cache_keys() -> set[str]:
    """Every key of this service's cache namespace in the backend."""
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return {k.decode() for k in client.scan_iter("postboard:cache:*", count=1000)}
        finally:
            client.close()
    import diskcache

    with diskcache.Cache(CACHE_DIR) as disk:
        return {str(k) for k in disk.iterkeys() if str(k).startswith("postboard:cache:")}


@contextmanager
def sql_statements(app: Flask) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def touching(statements: list[str], *tables: str) -> list[str]:
    pattern = re.compile(rf"\b({'|'.join(tables)})\b", re.IGNORECASE)
    return [s for s in statements if pattern.search(s)]


def the_cache(app: Flask) -> Cache:
    with app.app_context():
        return app_cache()
