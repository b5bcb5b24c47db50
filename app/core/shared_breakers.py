"""Circuit breakers per outbound target whose state every process shares (pybreaker).

One breaker per key (a target's id), its state (closed, open, half-open, failure count, when it
opened) in a store every worker reads: Redis (pybreaker's `CircuitRedisStorage`) when REDIS_URL
is set, else a diskcache directory the host's processes share (the embedded default). A failure
seen by one worker counts for all; an open breaker is open for all.

Unlike the breakers that protect Redis itself (app/core/redis_client.py, state in memory), these
protect the service from its targets, so their state lives in Redis: if Redis is away pybreaker
reads "closed" and delivery carries on, guarded by its own timeouts.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis

STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)
_MAX_CACHED = 10_000  # breaker objects kept per process (each is a few keys' worth of state)


class DiskBreakerStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker's storage on a diskcache shared by the host's processes: each counter change is
    one atomic diskcache operation (SQLite underneath)."""

    def __init__(self, cache: Any, namespace: str) -> None:
        super().__init__("disk")
        self.cache = cache
        self.namespace = namespace
        self.cache.add(self._key("state"), pybreaker.STATE_CLOSED)

    def _key(self, name: str) -> str:
        return f"{self.namespace}:pybreaker:{name}"

    @property
    def state(self) -> str:
        return str(self.cache.get(self._key("state"), pybreaker.STATE_CLOSED))

    @state.setter
    def state(self, state: str) -> None:
        self.cache.set(self._key("state"), str(state))

    def increment_counter(self) -> None:
        self.cache.incr(self._key("fail_counter"), default=0)

    def reset_counter(self) -> None:
        self.cache.set(self._key("fail_counter"), 0)

    def increment_success_counter(self) -> None:
        self.cache.incr(self._key("success_counter"), default=0)

    def reset_success_counter(self) -> None:
        self.cache.set(self._key("success_counter"), 0)

    @property
    def counter(self) -> int:
        return int(self.cache.get(self._key("fail_counter"), 0))

    @property
    def success_counter(self) -> int:
        return int(self.cache.get(self._key("success_counter"), 0))

    @property
    def opened_at(self) -> datetime | None:
        stamp = self.cache.get(self._key("opened_at"))
        return datetime.fromtimestamp(float(stamp), tz=UTC) if stamp is not None else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self.cache.set(self._key("opened_at"), now.timestamp())


class RedisBreakerStorage(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, keeping when the breaker opened to the microsecond (its own
    keeps whole seconds: an open time of a few seconds would end up to a second early)."""

    @property
    def opened_at(self) -> datetime | None:
        try:
            stamp = self._redis.get(self._namespace("opened_at"))
        except redis.RedisError:
            return None
        return datetime.fromtimestamp(float(stamp), tz=UTC) if stamp else None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        with contextlib.suppress(redis.RedisError):  # pybreaker's own storage logs and goes on
            self._redis.set(self._namespace("opened_at"), repr(now.timestamp()))


class SharedBreakers:
    """The breakers of one kind of target (`prefix`), one per key, state shared by processes."""

    def __init__(
        self,
        prefix: str,
        *,
        redis_url: str | None,
        directory: str,
        fail_max: int,
        reset_seconds: float,
    ) -> None:
        self.prefix = prefix
        self.redis_url = redis_url
        self.directory = directory
        self.fail_max = fail_max
        self.reset_seconds = reset_seconds
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._lock = threading.Lock()
        self._disk: Any = None

    def breaker(self, key: str) -> pybreaker.CircuitBreaker:
        """The breaker of `key`; its storage is built on first use (the Redis one calls Redis)."""
        breaker = self._breakers.get(key)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(key)
                if breaker is None:
                    if len(self._breakers) >= _MAX_CACHED:
                        self._breakers.clear()  # the state is in the store: cheap to rebuild
                    breaker = self._breakers[key] = pybreaker.CircuitBreaker(
                        fail_max=self.fail_max,
                        reset_timeout=self.reset_seconds,
                        state_storage=self._storage(key),
                        name=f"{self.prefix}:{key}",
                    )
        return breaker

    def _storage(self, key: str) -> pybreaker.CircuitBreakerStorage:
        namespace = f"{self.prefix}:{key}"
        client = self._redis()
        if client is not None:
            return RedisBreakerStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)
        return DiskBreakerStorage(self._disk_cache(), namespace)

    def _redis(self) -> Any:
        from app.core.redis_client import get_redis

        return get_redis(self.redis_url)

    def _disk_cache(self) -> Any:
        if self._disk is None:
            import diskcache

            os.makedirs(self.directory, exist_ok=True)
            self._disk = diskcache.Cache(self.directory, timeout=5)
        return self._disk

    def wait_seconds(self, key: str) -> float:
        """How long `key`'s calls must wait: 0 when closed, half-open, or open past its reset
        timeout (the next call is the half-open probe); else the rest of the open time."""
        breaker = self.breaker(key)
        if breaker.current_state != pybreaker.STATE_OPEN:
            return 0.0
        opened = breaker._state_storage.opened_at
        if opened is None:
            return 0.0
        return max(0.0, opened.timestamp() + self.reset_seconds - time.time())

    def state(self, key: str) -> str:
        return str(self.breaker(key).current_state)

    def forget(self, key: str) -> None:
        """Drop `key`'s state (its target is gone)."""
        self._breakers.pop(key, None)
        client = self._redis()
        names = ("state", "fail_counter", "success_counter", "opened_at")
        keys = [f"{self.prefix}:{key}:pybreaker:{name}" for name in names]
        if client is not None:
            client.delete(*keys)
        else:
            for name in keys:
                self._disk_cache().delete(name)

    def count_by_state(self) -> Counter[str]:
        """How many targets are in each state, from the shared store (targets that never
        called have no state yet and are not counted)."""
        suffix = ":pybreaker:state"
        counts: Counter[str] = Counter(dict.fromkeys(STATES, 0))
        client = self._redis()
        if client is not None:
            keys = list(client.scan_iter(match=f"{self.prefix}:*{suffix}", count=1000))
            for start in range(0, len(keys), 1000):
                for value in client.mget(keys[start : start + 1000]):
                    if value is not None:
                        counts[value.decode() if isinstance(value, bytes) else str(value)] += 1
            return counts
        cache = self._disk_cache()
        for name in cache.iterkeys():
            if str(name).startswith(f"{self.prefix}:") and str(name).endswith(suffix):
                value = cache.get(name)
                if value is not None:
                    counts[str(value)] += 1
        return counts
