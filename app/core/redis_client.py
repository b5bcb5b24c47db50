"""One Redis connection pool per process, built lazily from REDIS_URL (None when not configured)."""

from __future__ import annotations

import redis

_clients: dict[str, redis.Redis] = {}


def get_redis(url: str | None) -> redis.Redis | None:
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        # Short timeouts: a slow or dead Redis must degrade a request, not hang it.
        client = redis.Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=30
        )
        _clients[url] = client
    return client


def close_all() -> None:
    """Close every pool (worker exit, graceful shutdown)."""
    for client in _clients.values():
        client.close()
    _clients.clear()
