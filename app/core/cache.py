"""Cache-aside and write-through for single resources, with versioned, race-safe entries.

Entries live under `postboard:cache:<SCHEMA>:<kind>:<public id>` as JSON `{"v": version, ...}`.
Every write goes through a compare-on-version: an entry is only replaced by one whose version is
at least as new, and a write *invalidates* by leaving a tombstone `{"v": new version}` that no
older value can overwrite. So a reader that loaded a row before a write can never put the old
state back, and a slow write-through can never overwrite a newer one.

This module is the mechanism only: each domain owns its key kinds, what an entry holds, its
fills and its warmer (app/users/cache.py, app/posts/cache.py); which write invalidates what is
app/events/handlers.py's table.

Backends (app/core/cache_backends.py): Redis in production (a Lua script does the
compare-and-set atomically); on the embedded default a diskcache directory under instance/
(SQLite-backed, shared by every process on the host). Redis calls go through a circuit breaker
(pybreaker, state in process memory, as a breaker that protects Redis must not keep its state in
that Redis): after a few failures the cache is skipped for a cool-down, reads go straight to the
database and nothing fails.

List aggregates (a user's post count) cannot carry a row version, so they use a *generation*
instead: `postboard:cache:<SCHEMA>:<gen kind>:<owner>` holds an opaque number that every write
affecting the aggregate changes (after its commit, synchronously), and a count is stored with the
generation it was computed under, only if that generation is still current (compare-and-set),
and served only while it is. A reader reads the generation *before* counting, so a count from a
snapshot older than a write either is refused or is stored under a generation the write's bump
has already replaced. An absent generation starts at a random 52-bit number (when a reader
needs one), never at 0: a key that expires or is evicted can never come back with a value an old
entry was stored under; so a bump of an absent generation has nothing to do.

Every entry (value, tombstone, count) carries a MAC (app/core/cache_integrity.py): entries decide
who may do what (a user's `owner`/`admin`, a post's `author`/`status`), so one with a bad or
missing MAC is a miss and a `cache_entry_tampered` security event, never a right.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pybreaker
import redis
from cryptography.fernet import Fernet

from app.core import prefetch
from app.core.cache_backends import PREFIX, STATS_KEY, Backend, DiskBackend, RedisBackend
from app.core.cache_integrity import mac_key, signed, verified
from app.core.metrics import record_cache_read
from app.core.redis_client import skip_redis

__all__ = ["PREFIX", "STATS_KEY", "Backend", "Cache", "DiskBackend", "RedisBackend"]

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

SCHEMA = "v3"  # bump when a cached shape changes: a deploy never reads an old shape (v3: MACs)
# How often owed tombstones and bumps are retried in the background (each try goes through the
# breaker, so while it is open a try costs nothing and its probe paces real attempts).
REPLAY_INTERVAL_SECONDS = 0.5


def fresh_generation() -> str:
    """Where an absent generation starts: random, so a lost key never repeats an old value (52
    bits: exact as a Lua number and far below INCR's 64-bit limit)."""
    return str(secrets.randbits(52))


def cache_key(kind: str, public_id: object) -> str:
    return f"{PREFIX}:{SCHEMA}:{kind}:{public_id}"


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
        aggregate_ttl: int | None = None,
    ) -> None:
        self.backend = backend
        self._mac_key = mac_key(secret)
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
        # Generation bumps that could not be written, the same way (key -> sequence number).
        self._pending_bumps: dict[str, int] = {}
        self._bump_seq = 0
        self._replayer: threading.Timer | None = None
        self.aggregate_ttl = aggregate_ttl if aggregate_ttl is not None else ttl
        # A generation outlives the entries stored under it (an expired one only costs a miss).
        self._gen_ttl = 2 * self.aggregate_ttl

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    def seal(self, text: str) -> str:
        """Encrypt a private value (an email) before it goes into the cache."""
        return self._box.encrypt(text.encode()).decode()

    def unseal(self, token: str) -> str:
        return self._box.decrypt(token.encode()).decode()

    def decode(self, key: str, raw: object) -> dict[str, Any] | None:
        """The entry `{"v": version, "d": data}` stored under `key` as `raw` (bytes read from the
        backend, here or in the pipeline's round trip); None for nothing, a tombstone, or an
        entry whose MAC is bad or missing (a miss: the database answers)."""
        if not isinstance(raw, bytes) or not raw:
            return None
        entry = verified(self._mac_key, key, raw)
        return entry if entry is not None and "d" in entry and "v" in entry else None

    def _sign(self, key: str, entry: dict[str, Any]) -> bytes:
        return signed(self._mac_key, key, entry)

    def _call(self, fn: Any, *args: Any) -> Any:
        if skip_redis(self.breaker):
            return None  # open: the breaker's background probe finds out when Redis is back
        try:
            with self.breaker.calling():
                return fn(*args)
        except pybreaker.CircuitBreakerError:
            return None
        except (redis.RedisError, OSError, TimeoutError) as exc:
            log.warning("cache_unavailable", extra={"error": type(exc).__name__})
            return None

    @property
    def owes_writes(self) -> bool:
        """True while tombstones or generation bumps missed during an outage are still unwritten
        (then nothing may be served from the cache before they are)."""
        return bool(self._pending or self._pending_bumps)

    def read(self, kind: str, public_id: object) -> dict[str, Any] | None:
        """The cached entry, or None on a miss, a tombstone, or a cache that is off or down."""
        if self.backend is None:
            return None
        if self.owes_writes and not self._flush_pending():
            return None  # still down: the database answers
        key = cache_key(kind, public_id)
        raw = prefetch.take(key)  # read ahead in the pipeline's round trip (app/core/prefetch.py)
        if raw is prefetch.NOT_HELD:
            raw = self._call(self.backend.get, key)
        entry = self.decode(key, raw)
        self.note_read(kind, hit=entry is not None)
        return entry

    def note_read(self, kind: str, *, hit: bool) -> None:
        """Count a read (`flask cache stats` and the metrics); `read` does it for its own."""
        self._count(miss=not hit)
        record_cache_read(kind, hit=hit)

    def fill(self, kind: str, public_id: object, version: int, data: dict[str, Any]) -> None:
        """Store the state at `version`, unless the cache already holds something newer."""
        self.fill_many(kind, [(public_id, version, data)])

    def fill_many(self, kind: str, entries: Iterable[tuple[object, int, dict[str, Any]]]) -> None:
        if self.backend is None:
            return
        keys = ((cache_key(kind, pid), version, data) for pid, version, data in entries)
        items = [
            (key, self._sign(key, {"v": version, "d": data}), version)
            for key, version, data in keys
        ]
        if items:
            self._call(self.backend.put_if_newer, items, self.ttl)

    def invalidate(self, kind: str, entries: Iterable[tuple[object, int]]) -> None:
        """Tombstone each `(public id, new version)`: older states can no longer be cached."""
        if self.backend is None:
            return
        keys = ((cache_key(kind, pid), version) for pid, version in entries)
        items = [(key, self._sign(key, {"v": version}), version) for key, version in keys]
        if items and not self._call(self.backend.put_if_newer, items, self.ttl):
            with self._lock:
                for key, payload, version in items:
                    self._pending[key] = (payload, version)
            self._replay_soon()

    def _replay_soon(self) -> None:
        """Retry what is owed from a timer thread, not only on this process's next request:
        other processes may read those entries from Redis as soon as it is back."""
        with self._lock:
            if self._replayer is not None:
                return
            self._replayer = threading.Timer(REPLAY_INTERVAL_SECONDS, self._replay)
            self._replayer.daemon = True
            self._replayer.start()

    def _replay(self) -> None:
        with self._lock:
            self._replayer = None
        if not self._flush_pending():
            self._replay_soon()

    def _flush_pending(self) -> bool:
        """Write the tombstones and generation bumps the cache missed while down; True once none
        is left."""
        with self._lock:
            items = [(key, payload, version) for key, (payload, version) in self._pending.items()]
            bumps = dict(self._pending_bumps)
        if (not items and not bumps) or self.backend is None:
            return True
        if items and not self._call(self.backend.put_if_newer, items, self.ttl):
            return False
        if bumps and not self._call(self.backend.bump_generations, sorted(bumps), self._gen_ttl):
            return False
        with self._lock:
            for key, _payload, version in items:
                if self._pending.get(key, (b"", -1))[1] == version:
                    del self._pending[key]
            for key, seq in bumps.items():
                if self._pending_bumps.get(key) == seq:  # not bumped again meanwhile
                    del self._pending_bumps[key]
        return True

    # List aggregates, under a generation (see the module docstring) ----------------------------

    def read_aggregate(
        self, gen_kind: str, kind: str, owner: object, part: str
    ) -> tuple[dict[str, Any] | None, bytes | None]:
        """`(entry, generation)`: the entry when it is cached under the current generation, else
        None (a miss); the generation to compute a fresh value under and pass to
        `fill_aggregate`, or None when the cache is off, down or owes a bump (do not fill)."""
        if self.backend is None:
            return None, None
        if self.owes_writes and not self._flush_pending():
            return None, None
        entry_key = cache_key(kind, f"{owner}:{part}")
        got = self._call(
            self.backend.read_generation,
            cache_key(gen_kind, owner),
            entry_key,
            fresh_generation(),
            self._gen_ttl,
        )
        generation, raw = got if got is not None else (None, None)
        entry = verified(self._mac_key, entry_key, raw) if raw else None
        if entry is None or generation is None or entry.get("g") != generation.decode():
            self._count(miss=True)
            record_cache_read(kind, hit=False)
            return None, generation
        self._count(miss=False)
        record_cache_read(kind, hit=True)
        return entry, generation

    def generation(self, gen_kind: str, owner: object) -> bytes | None:
        """The current generation (started when absent); None when the cache cannot say."""
        if self.backend is None:
            return None
        if self.owes_writes and not self._flush_pending():
            return None
        got = self._call(
            self.backend.read_generation,
            cache_key(gen_kind, owner),
            None,
            fresh_generation(),
            self._gen_ttl,
        )
        return got[0] if got is not None else None

    def fill_aggregate(
        self,
        gen_kind: str,
        kind: str,
        owner: object,
        generation: bytes,
        parts: dict[str, dict[str, Any]],
    ) -> bool:
        """Store each part computed under `generation`; refused (False) if a write bumped it."""
        if self.backend is None or not parts:
            return False
        tag = generation.decode()
        keys = ((cache_key(kind, f"{owner}:{part}"), data) for part, data in parts.items())
        items = [(key, self._sign(key, {"g": tag, "d": data})) for key, data in keys]
        stored = self._call(
            self.backend.put_if_generation,
            cache_key(gen_kind, owner),
            generation,
            items,
            self.aggregate_ttl,
            self._gen_ttl,
        )
        return bool(stored)

    def bump(self, gen_kind: str, owners: Iterable[object]) -> None:
        """Invalidate every aggregate of these owners (a new generation); call after the commit.
        On a cache failure the bump is kept and replayed first, as tombstones are."""
        if self.backend is None:
            return
        keys = sorted({cache_key(gen_kind, owner) for owner in owners})
        if keys and not self._call(self.backend.bump_generations, keys, self._gen_ttl):
            with self._lock:
                for key in keys:
                    self._bump_seq += 1
                    self._pending_bumps[key] = self._bump_seq
            self._replay_soon()

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
    from app.core.redis_client import ProbeWhenOpen, get_redis

    ttl = int(config["CACHE_TTL_SECONDS"])
    aggregate_ttl = int(config.get("CACHE_AGGREGATE_TTL_SECONDS", ttl))
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
        if client is not None:  # requests skip Redis while open; a PING tries it again
            breaker.add_listener(ProbeWhenOpen(client.ping))
    return Cache(backend, ttl=ttl, secret=secret, breaker=breaker, aggregate_ttl=aggregate_ttl)


def app_cache() -> Cache:
    """This app's cache (built once per app)."""
    from flask import current_app

    cache = current_app.extensions.get("cache")
    if cache is None:
        cache = current_app.extensions["cache"] = build_cache(current_app.config)
    return cache
