"""A step of the pipeline: a GET of a cached single resource answered from the cache entry's bytes.

A domain route declares, on its GET view, which cache entry represents the resource and how a
caller sees it (`@cached_read(kind, id_arg, render)`). The pipeline then adds the entry's GET to
its one Redis round trip (app/core/pipeline.py, step 4) and, when the entry is there and
`render(data, principal)` gives a view, answers with `single_json` (the very function the view
would use: same bytes, ETag, Cache-Control, Vary, 304 on a matching If-None-Match) instead of
running the view. Everything else (the limit, its 429, and the whole finish: headers,
compression, CORS, the access line, metrics) is the pipeline's as for any request.

Nothing is served this way unless it is exact: `render` returns None for what only the view can
answer (a caller who may see more, a draft), a miss or a tombstone goes to the view, and so does
any GET with a query string (the entry is the plain resource; `?as_of=` asks for history), and
everything while the cache is off, down (its breaker open) or owes writes from an outage, or
when the cache is not on the limiter's Redis (no shared round trip).

A route whose handler reads cache entries it can name from the request (GraphQL's `user(id)`)
declares them with `@reads_ahead(reads)`: the same round trip reads them, and the handler's own
cache reads take the replies (app/core/prefetch.py) instead of a round trip each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, Response, request

from app.core.cache import Cache, RedisBackend, app_cache, cache_key
from app.core.security import Principal

F = TypeVar("F", bound=Callable[..., Any])
Render = Callable[[dict[str, Any], Principal | None], dict[str, Any] | None]
ReadsAhead = Callable[[], list[tuple[str, object]]]  # (cache kind, public id) about to be read
ATTR = "_cached_read"
AHEAD_ATTR = "_reads_ahead"


@dataclass(frozen=True)
class CachedRead:
    kind: str  # the cache kind the entries are stored under
    id_arg: str  # the view argument holding the resource's public id
    render: Render  # (entry data, verified principal or None) -> the view, or None: not here


@dataclass(frozen=True)
class Planned:
    read: CachedRead
    cache: Cache
    key: str


def cached_read(kind: str, id_arg: str, render: Render) -> Callable[[F], F]:
    """Declare that a GET view's answer may come straight from its cache entry (see above)."""

    def decorator(view: F) -> F:
        setattr(view, ATTR, CachedRead(kind, id_arg, render))
        return view

    return decorator


def plan(app: Flask, client: Any) -> Planned | None:
    """The cache entry to read in the round trip for this request, or None."""
    if request.method != "GET" or request.view_args is None:
        return None
    if request.query_string:  # an entry is the plain resource; `?as_of=` asks for another
        return None
    declared: CachedRead | None = getattr(_handler(app), ATTR, None)
    if declared is None or declared.id_arg not in request.view_args:
        return None
    cache = _sharing(client)
    if cache is None:
        return None
    return Planned(declared, cache, cache_key(declared.kind, request.view_args[declared.id_arg]))


def reads_ahead(reads: ReadsAhead) -> Callable[[F], F]:
    """Declare the cache entries a view is about to read, as `reads()` finds them in the
    request: the pipeline reads them in its one round trip and the cache's `read` takes each
    reply from there (app/core/prefetch.py). `reads` must be cheap and never raise, and name
    only what the request reads before it writes anything; a wrong guess costs an unused GET."""

    def decorator(view: F) -> F:
        setattr(view, AHEAD_ATTR, reads)
        return view

    return decorator


def plan_ahead(app: Flask, client: Any) -> list[str]:
    """The cache keys the view declared it will read (`reads_ahead`), or none."""
    declared: ReadsAhead | None = getattr(_handler(app), AHEAD_ATTR, None)
    if declared is None:
        return []
    wanted = declared()
    if not wanted or _sharing(client) is None:
        return []
    return list(dict.fromkeys(cache_key(kind, public_id) for kind, public_id in wanted))


def _handler(app: Flask) -> Any:
    """The view function (or method-view method) this request is routed to, if any."""
    if request.endpoint is None:
        return None
    view = app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view
    return getattr(view_class, request.method.lower(), None)


def _sharing(client: Any) -> Cache | None:
    """The cache, when its reads can join the limiter's round trip (on that Redis client, up,
    owing no writes): else None."""
    cache = app_cache()
    backend = cache.backend
    if (
        not isinstance(backend, RedisBackend)
        or backend.client is not client
        or cache.owes_writes
        or cache.breaker.current_state != "closed"
    ):
        return None
    return cache


def serve(planned: Planned, raw: Any, principal: Principal | None) -> Response | None:
    """The response from the entry's bytes, or None to let the view answer."""
    from app.core.http import single_json  # the view's own response builder

    entry = planned.cache.decode(planned.key, raw)  # its MAC verified: a forged one is a miss
    if entry is None:
        return None
    view = planned.read.render(entry["d"], principal)
    if view is None:
        return None
    planned.cache.note_read(planned.read.kind, hit=True)
    response: Response = single_json(view, int(entry["v"]))
    return response
