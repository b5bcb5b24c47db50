"""Cache warming: each domain registers a warmer for its own kinds (app/users/cache.py, ...);
`warm` (the `cache.warm` task, `flask cache warm`) runs them all through the one mechanism."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from app.core.cache import Cache

# (cache, session, limit, batch) -> how many entries it filled.
Warmer = Callable[[Cache, Any, int, int], int]
WARMERS_KEY = "cache_warmers"


def register_warmer(app: Flask, name: str, warmer: Warmer) -> None:
    """Make `warm` (the `cache.warm` task, `flask cache warm`) fill `name` with `warmer`."""
    app.extensions.setdefault(WARMERS_KEY, {})[name] = warmer


def warm(cache: Cache, session: Any, *, limit: int, batch: int = 500) -> dict[str, int]:
    """Run every registered warmer (the most recent `limit` rows of each, `batch` per pipelined
    write). Idempotent and safe beside live writes: each entry goes through the version compare.
    """
    from flask import current_app

    warmers: dict[str, Warmer] = current_app.extensions.get(WARMERS_KEY, {})
    if not cache.enabled or limit <= 0:
        return dict.fromkeys(warmers, 0)
    return {name: warmer(cache, session, limit, batch) for name, warmer in warmers.items()}


def fill_in_batches(
    cache: Cache,
    kind: str,
    rows: Iterable[Any],
    build: Callable[[Any], dict[str, Any]],
    batch: int,
) -> int:
    """Fill `kind` from rows with `public_id` and `version`, `batch` entries per write."""
    filled = 0
    chunk: list[tuple[object, int, dict[str, Any]]] = []
    for row in rows:
        chunk.append((row.public_id, row.version, build(row)))
        if len(chunk) >= batch:
            cache.fill_many(kind, chunk)
            filled += len(chunk)
            chunk = []
    if chunk:
        cache.fill_many(kind, chunk)
        filled += len(chunk)
    return filled
