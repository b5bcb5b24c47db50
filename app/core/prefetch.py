"""Cache entries read ahead for this request, in the pipeline's one Redis round trip.

A route that knows, from the request alone, which cache entries its handler is going to read
declares them (`@reads_ahead`, app/core/cached_read.py); the pipeline adds their GETs to its
round trip (app/core/pipeline.py, step 4) and holds the replies here, in the request's `g`. The
cache's `read` (app/core/cache.py) then takes a held reply, once, where it would have sent its
own GET: everything else about the read (the MAC check, tombstones, counting, the fill on a
miss) is unchanged. A reply not taken is dropped with the request.
"""

from __future__ import annotations

from typing import Any

from flask import g, has_app_context

NOT_HELD = object()  # no reply held for this key: ask the backend
_ATTR = "cache_read_ahead"


def hold(replies: dict[str, Any]) -> None:
    """Keep this request's read-ahead replies, by cache key."""
    setattr(g, _ATTR, replies)


def take(key: str) -> Any:
    """The held reply for `key` (removed: a second read asks the backend), else NOT_HELD."""
    if not has_app_context():
        return NOT_HELD
    held: dict[str, Any] | None = g.get(_ATTR)
    if not held:
        return NOT_HELD
    return held.pop(key, NOT_HELD)
