"""Named leases every process shares: at most one holder of a name at a time, for a bounded time.

Redis (`SET NX PX`, renewed and released only by their owner, with a compare in a Lua script)
when REDIS_URL is set; else a diskcache directory the host's processes share (an atomic `add`
with an expiry; renew and release inside one diskcache transaction). A holder that dies loses
its lease when the time runs out.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Protocol

# KEYS[1] = lease, ARGV[1] = owner, ARGV[2] = milliseconds (0 = release).
_IF_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""


class Leases(Protocol):
    def acquire(self, name: str, owner: str, seconds: float) -> bool: ...

    def renew(self, name: str, owner: str, seconds: float) -> bool: ...

    def release(self, name: str, owner: str) -> None: ...

    def held(self, name: str) -> bool: ...


class RedisLeases:
    def __init__(self, client: Any) -> None:
        self.client = client
        self._if_owner = client.register_script(_IF_OWNER)

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        return bool(self.client.set(name, owner, nx=True, px=max(1, int(seconds * 1000))))

    def renew(self, name: str, owner: str, seconds: float) -> bool:
        return bool(self._if_owner(keys=[name], args=[owner, max(1, int(seconds * 1000))]))

    def release(self, name: str, owner: str) -> None:
        self._if_owner(keys=[name], args=[owner, 0])

    def held(self, name: str) -> bool:
        return bool(self.client.exists(name))


class DiskLeases:
    def __init__(self, directory: str) -> None:
        import diskcache

        os.makedirs(directory, exist_ok=True)
        self.cache = diskcache.Cache(directory, timeout=5)

    def acquire(self, name: str, owner: str, seconds: float) -> bool:
        return bool(self.cache.add(name, owner, expire=seconds))  # expired entries count as absent

    def renew(self, name: str, owner: str, seconds: float) -> bool:
        with self.cache.transact():
            if self.cache.get(name) != owner:
                return False
            self.cache.set(name, owner, expire=seconds)
            return True

    def release(self, name: str, owner: str) -> None:
        with self.cache.transact():
            if self.cache.get(name) == owner:
                self.cache.delete(name)

    def held(self, name: str) -> bool:
        return self.cache.get(name) is not None


_disk: dict[str, DiskLeases] = {}


def shared_leases(redis_url: str | None, directory: str) -> Leases:
    """Redis when configured (every process on every host), else the host's disk."""
    from app.core.redis_client import get_redis

    client = get_redis(redis_url)
    if client is not None:
        return RedisLeases(client)
    if directory not in _disk:
        _disk[directory] = DiskLeases(directory)
    return _disk[directory]


def new_owner() -> str:
    """A holder's name: unique per acquisition, so a late release never frees another's lease."""
    return secrets.token_hex(8)
