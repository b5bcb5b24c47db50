"""The cache's two backends: Redis (a Lua script per compare-and-set, atomic) and, for the
embedded default, a diskcache directory every process on the host shares (the same rules, each
inside one diskcache transaction). app/core/cache.py says what the entries and generations are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import redis

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


# KEYS[1] = generation, KEYS[2] (optional) = entry; ARGV[1] = the generation to start from when
# there is none, ARGV[2] = its TTL. Returns {generation, entry or nil}.
_READ_GENERATION = """
local gen = redis.call('GET', KEYS[1])
if not gen then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  gen = ARGV[1]
end
local entry = false
if KEYS[2] then
  entry = redis.call('GET', KEYS[2])
end
return {gen, entry}
"""

# KEYS = generations; ARGV[1] = TTL. An absent generation stays absent: nothing can be stored
# under it, and the next reader starts a fresh random one.
_BUMP_GENERATIONS = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('INCR', key)
    redis.call('EXPIRE', key, tonumber(ARGV[1]))
  end
end
return 1
"""

# KEYS[1] = generation, KEYS[2..n] = entries; ARGV[1] = the generation the entries were computed
# under, ARGV[2] = entry TTL, ARGV[3] = generation TTL, ARGV[4..] = the entries' JSON.
# Stores nothing (returns 0) unless that generation is still the current one.
_PUT_IF_GENERATION = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', tonumber(ARGV[2]))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class Backend(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put_if_newer(self, items: list[tuple[str, bytes, int]], ttl: int) -> bool: ...
    def count_keys(self) -> int: ...
    def clear(self) -> int: ...
    def add_stats(self, hits: int, misses: int) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def read_generation(
        self, gen_key: str, entry_key: str | None, start: str, ttl: int
    ) -> tuple[bytes, bytes | None]: ...
    def bump_generations(self, gen_keys: list[str], ttl: int) -> bool: ...
    def put_if_generation(
        self,
        gen_key: str,
        generation: bytes,
        items: list[tuple[str, bytes]],
        ttl: int,
        gen_ttl: int,
    ) -> bool: ...


class RedisBackend:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._put = client.register_script(_PUT_IF_NEWER)
        self._read_gen = client.register_script(_READ_GENERATION)
        self._bump = client.register_script(_BUMP_GENERATIONS)
        self._put_gen = client.register_script(_PUT_IF_GENERATION)

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

    def read_generation(
        self, gen_key: str, entry_key: str | None, start: str, ttl: int
    ) -> tuple[bytes, bytes | None]:
        keys = [gen_key] if entry_key is None else [gen_key, entry_key]
        generation, raw = self._read_gen(keys=keys, args=[start, ttl])
        return generation, raw

    def bump_generations(self, gen_keys: list[str], ttl: int) -> bool:
        self._bump(keys=gen_keys, args=[ttl])
        return True

    def put_if_generation(
        self,
        gen_key: str,
        generation: bytes,
        items: list[tuple[str, bytes]],
        ttl: int,
        gen_ttl: int,
    ) -> bool:
        keys = [gen_key, *(key for key, _payload in items)]
        args: list[bytes | int] = [generation, ttl, gen_ttl, *(p for _key, p in items)]
        return bool(self._put_gen(keys=keys, args=args))


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

    # Generations: the same rules as the Lua scripts, each inside one diskcache transaction (one
    # writer at a time across every process on the host), values as bytes like Redis returns.

    def read_generation(
        self, gen_key: str, entry_key: str | None, start: str, ttl: int
    ) -> tuple[bytes, bytes | None]:
        with self.cache.transact():
            generation = self.cache.get(gen_key)
            if not isinstance(generation, bytes):
                generation = start.encode()
                self.cache.set(gen_key, generation, expire=ttl)
            raw = self.cache.get(entry_key) if entry_key is not None else None
        return generation, raw if isinstance(raw, bytes) else None

    def bump_generations(self, gen_keys: list[str], ttl: int) -> bool:
        with self.cache.transact():
            for key in gen_keys:
                current = self.cache.get(key)
                if isinstance(current, bytes):
                    self.cache.set(key, str(int(current) + 1).encode(), expire=ttl)
        return True

    def put_if_generation(
        self,
        gen_key: str,
        generation: bytes,
        items: list[tuple[str, bytes]],
        ttl: int,
        gen_ttl: int,
    ) -> bool:
        with self.cache.transact():
            if self.cache.get(gen_key) != generation:
                return False
            for key, payload in items:
                self.cache.set(key, payload, expire=ttl)
            self.cache.touch(gen_key, expire=gen_ttl)
        return True
