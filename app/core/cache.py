"""Cache-aside and write-through for single resources, with versioned, race-safe entries.

Entries live under `postboard:cache:<SCHEMA>:<kind>:<public id>` as JSON `{"v": version, ...}`.
Every write goes through a compare-on-version: an entry is only replaced by one whose version is
at least as new, and a write *invalidates* by leaving a tombstone `{"v": new version}` that no
older value can overwrite. So a reader that loaded a row before a write can never put the old
state back, and a slow write-through can never overwrite a newer one.

Backends: Redis in production (a Lua script does the compare-and-set atomically); on the
embedded default a diskcache directory under instance/ (SQLite-backed, shared by every process
on the host). Redis calls go through a circuit breaker (pybreaker, state in process memory, as a
breaker that protects Redis must not keep its state in that Redis): after a few failures the
cache is skipped for a cool-down, reads go straight to the database and nothing fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import pybreaker
import redis
from cryptography.fernet import Fernet

log = logging.getLogger(__name__)

SCHEMA = "v2"  # bump when a cached shape changes: a deploy never reads an old shape
PREFIX = "postboard:cache"
STATS_KEY = "postboard:cache-stats"

# KEYS[1] = entry, ARGV[1] = new JSON, ARGV[2] = its version, ARGV[3] = TTL seconds.
# Refuses (returns 0) when the stored entry (value or tombstone) is newer.
_PUT_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and decoded['v'] and tonumber(decoded['v']) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[3]))
return 1
"""


def cache_key(kind: str, public_id: object) -> str:
    return f"{PREFIX}:{SCHEMA}:{kind}:{public_id}"


class Backend(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put_if_newer(self, items: list[tuple[str, bytes, int]], ttl: int) -> bool: ...
    def count_keys(self) -> int: ...
    def clear(self) -> int: ...
    def add_stats(self, hits: int, misses: int) -> None: ...
    def stats(self) -> dict[str, int]: ...


class RedisBackend:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._put = client.register_script(_PUT_IF_NEWER)

    def get(self, key: str) -> bytes | None:
        return self.client.get(key)  # type: ignore[return-value]

    def put_if_newer(self, items: list[tuple[str, bytes, int]], ttl: int) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for key, payload, version in items:
            self._put(keys=[key], args=[payload, version, ttl], client=pipe)
        pipe.execute()
        return True

    def count_keys(self) -> int:
        return sum(1 for _ in self.client.scan_iter(f"{PREFIX}:*", count=1000))

    def clear(self) -> int:
        removed = 0
        batch: list[Any] = []
        for key in self.client.scan_iter(f"{PREFIX}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(self.client.delete(*batch))
                batch = []
        if batch:
            removed += int(self.client.delete(*batch))
        self.client.delete(STATS_KEY)
        return removed

    def add_stats(self, hits: int, misses: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(STATS_KEY, "hits", hits)
        pipe.hincrby(STATS_KEY, "misses", misses)
        pipe.execute()

    def stats(self) -> dict[str, int]:
        raw = self.client.hgetall(STATS_KEY)
        return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


class DiskBackend:
    """diskcache (SQLite underneath): a cache every process on this host shares."""

    def __init__(self, directory: Path) -> None:
        import diskcache

        self.cache = diskcache.Cache(
            str(directory), timeout=1, eviction_policy="least-recently-used"
        )

    def get(self, key: str) -> bytes | None:
        value = self.cache.get(key)
        return value if isinstance(value, bytes) else None

    def put_if_newer(self, items: list[tuple[str, bytes, int]], ttl: int) -> bool:
        with self.cache.transact():  # one writer at a time: the compare-and-set is atomic
            for key, payload, version in items:
                current = self.cache.get(key)
                if isinstance(current, bytes) and json.loads(current).get("v", 0) > version:
                    continue
                self.cache.set(key, payload, expire=ttl)
        return True

    def count_keys(self) -> int:
        return sum(1 for key in self.cache.iterkeys() if str(key).startswith(f"{PREFIX}:"))

    def clear(self) -> int:
        removed = 0
        for key in list(self.cache.iterkeys()):
            if str(key).startswith(f"{PREFIX}:") and self.cache.delete(key):
                removed += 1
        self.cache.delete(STATS_KEY)
        return removed

    def add_stats(self, hits: int, misses: int) -> None:
        with self.cache.transact():
            current = self.cache.get(STATS_KEY) or {"hits": 0, "misses": 0}
            self.cache.set(
                STATS_KEY, {"hits": current["hits"] + hits, "misses": current["misses"] + misses}
            )

    def stats(self) -> dict[str, int]:
        return dict(self.cache.get(STATS_KEY) or {})


class Cache:
    """The cache as services see it. Every method is safe to call when the cache is off, down
    or tripped: reads then miss and writes are skipped."""

    def __init__(
        self,
        backend: Backend | None,
        *,
        ttl: int,
        secret: str = "",
        breaker: pybreaker.CircuitBreaker | None = None,
        flush_every: float = 2.0,
    ) -> None:
        self.backend = backend
        key = hashlib.sha256(b"cache-seal:" + secret.encode()).digest()
        self._box = Fernet(base64.urlsafe_b64encode(key))
        self.ttl = ttl
        self.breaker = breaker or pybreaker.CircuitBreaker(fail_max=3, reset_timeout=10)
        self._hits = 0
        self._misses = 0
        self._flushed = time.monotonic()
        self._flush_every = flush_every
        self._lock = threading.Lock()
        # Tombstones that could not be written (cache down): written first once it is back, so
        # a Redis that restarts from persisted data cannot serve the state before those writes.
        self._pending: dict[str, tuple[bytes, int]] = {}

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def seal(self, text: str) -> str:
        """Encrypt a private value (an email) before it goes into the cache."""
        return self._box.encrypt(text.encode()).decode()

    def unseal(self, token: str) -> str:
        return self._box.decrypt(token.encode()).decode()

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            with self.breaker.calling():
                return fn(*args)
        except pybreaker.CircuitBreakerError:
            return None
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("cache_unavailable", extra={"error": type(exc).__name__})
            return None

    def read(self, kind: str, public_id: object) -> dict[str, Any] | None:
        """The cached entry, or None on a miss, a tombstone, or a cache that is off or down."""
        if self.backend is None:
            return None
        if self._pending and not self._flush_pending():
            return None  # still down: the database answers
        raw = self._call(self.backend.get, cache_key(kind, public_id))
        entry = json.loads(raw) if raw else None
        if entry is None or "d" not in entry:
            self._count(miss=True)
            return None
        self._count(miss=False)
        return entry

    def fill(self, kind: str, public_id: object, version: int, data: dict[str, Any]) -> None:
        """Store the state at `version`, unless the cache already holds something newer."""
        self.fill_many(kind, [(public_id, version, data)])

    def fill_many(self, kind: str, entries: Iterable[tuple[object, int, dict[str, Any]]]) -> None:
        if self.backend is None:
            return
        items = [
            (cache_key(kind, pid), json.dumps({"v": version, "d": data}).encode(), version)
            for pid, version, data in entries
        ]
        if items:
            self._call(self.backend.put_if_newer, items, self.ttl)

    def invalidate(self, kind: str, entries: Iterable[tuple[object, int]]) -> None:
        """Tombstone each `(public id, new version)`: older states can no longer be cached."""
        if self.backend is None:
            return
        items = [
            (cache_key(kind, pid), json.dumps({"v": version}).encode(), version)
            for pid, version in entries
        ]
        if items and not self._call(self.backend.put_if_newer, items, self.ttl):
            with self._lock:
                for key, payload, version in items:
                    self._pending[key] = (payload, version)

    def _flush_pending(self) -> bool:
        """Write the tombstones the cache missed while down; True once none is left."""
        with self._lock:
            items = [(key, payload, version) for key, (payload, version) in self._pending.items()]
        if not items or self.backend is None:
            return True
        if not self._call(self.backend.put_if_newer, items, self.ttl):
            return False
        with self._lock:
            for key, _payload, version in items:
                if self._pending.get(key, (b"", -1))[1] == version:
                    del self._pending[key]
        return True

    def _count(self, *, miss: bool) -> None:
        with self._lock:
            if miss:
                self._misses += 1
            else:
                self._hits += 1
            due = time.monotonic() - self._flushed >= self._flush_every
        if due:
            self.flush_stats()

    def flush_stats(self) -> None:
        """Add this process' hit/miss counts to the shared totals (batched: not per request)."""
        with self._lock:
            hits, misses, self._hits, self._misses = self._hits, self._misses, 0, 0
            self._flushed = time.monotonic()
        if self.backend is not None and (hits or misses):
            self._call(self.backend.add_stats, hits, misses)

    def stats(self) -> dict[str, int]:
        self.flush_stats()
        if self.backend is None:
            return {"hits": 0, "misses": 0, "keys": 0}
        totals = self._call(self.backend.stats) or {}
        keys = self._call(self.backend.count_keys) or 0
        return {"hits": totals.get("hits", 0), "misses": totals.get("misses", 0), "keys": keys}

    def clear(self) -> int:
        if self.backend is None:
            return 0
        return int(self._call(self.backend.clear) or 0)


def build_cache(config: dict[str, Any]) -> Cache:
    """The cache for an app: Redis when REDIS_URL is set, else a shared disk cache; or off."""
    from app.core.redis_client import get_redis

    ttl = int(config["CACHE_TTL_SECONDS"])
    breaker = pybreaker.CircuitBreaker(
        fail_max=int(config["CACHE_BREAKER_FAIL_MAX"]),
        reset_timeout=float(config["CACHE_BREAKER_RESET_SECONDS"]),
        name="cache",
    )
    secret = str(config["SECRET_KEY"])
    backend: Backend | None = None
    if config["CACHE_ENABLED"]:
        client = get_redis(config.get("REDIS_URL"))
        backend = RedisBackend(client) if client else DiskBackend(Path(config["CACHE_DIR"]))
    return Cache(backend, ttl=ttl, secret=secret, breaker=breaker)


def app_cache() -> Cache:
    """This app's cache (built once per app)."""
    from flask import current_app

    cache = current_app.extensions.get("cache")
    if cache is None:
        cache = current_app.extensions["cache"] = build_cache(current_app.config)
    return cache


def warm(cache: Cache, session: Any, *, limit: int, batch: int = 500) -> dict[str, int]:
    """Cache the most recent `limit` users and posts, `batch` rows per pipelined write.

    Idempotent and safe beside live writes: each entry goes through the version compare.
    """
    import sqlalchemy as sa
    from sqlalchemy.orm import contains_eager

    from app.posts.models import Post
    from app.posts.service import POST_KIND, post_cache_data
    from app.users.models import User
    from app.users.service import USER_KIND, user_cache_data

    warmed = {"users": 0, "posts": 0}
    if not cache.enabled or limit <= 0:
        return warmed
    users = sa.select(User).order_by(User.created_at.desc(), User.id.desc()).limit(limit)
    posts = (
        sa.select(Post)
        .join(Post.author)
        .options(contains_eager(Post.author))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(limit)
    )
    for kind, stmt, build, counter in (
        (USER_KIND, users, lambda u: user_cache_data(u, cache), "users"),
        (POST_KIND, posts, post_cache_data, "posts"),
    ):
        rows = session.scalars(stmt.execution_options(yield_per=batch))
        chunk: list[tuple[object, int, dict[str, Any]]] = []
        for row in rows:
            chunk.append((row.public_id, row.version, build(row)))
            if len(chunk) >= batch:
                cache.fill_many(kind, chunk)
                warmed[counter] += len(chunk)
                chunk = []
        if chunk:
            cache.fill_many(kind, chunk)
            warmed[counter] += len(chunk)
    return warmed
