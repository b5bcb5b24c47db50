"""The fast lane: anonymous cached single-resource reads answered in one Redis round trip.

`GET /api/users/{id}` is the hottest request of a public API, and on the full Flask path a
cached one costs about ten times a bare Flask route: three Redis round trips (flask-limiter's hit,
its window read for the headers, the cache GET) and the machinery of every hook. This WSGI
middleware, inside the app (ProxyFix, when configured, wraps it), answers the common case itself
and runs the same pipeline in the same order:

    request id -> hygiene -> identify -> rate limit -> validate -> handler -> log, metrics

- It takes only what it can answer exactly as the full path would: a GET of a canonical id, no
  query string, no body, no Authorization (anonymous: the view's auth step has nothing to check),
  no Origin (CORS), no If-None-Match / If-Match. Anything else goes to Flask untouched.
- Rate limit and cache read are one pipelined round trip: limits' own Lua scripts (acquire an
  entry of the caller's sliding window, read the window back for the X-RateLimit-* headers) on the
  same keys flask-limiter uses, then the cache GET. A refused acquire takes nothing (limits only
  counts what it admits), so the request goes to Flask, which answers the 429 itself.
- When the entry cannot be served here (a miss, a tombstone, a body to compress), the request goes
  to Flask with the hit already taken: `CHARGED` in the WSGI environ carries the window, the
  shared limit is then exempt for this request and its headers come from the environ
  (app/core/limiting.py), so a request is never counted twice.
- Served: the same bytes and headers as the full path (tests/test_fast_reads.py compares them),
  one access-log line from the same logger and the same metrics.

It steps aside (everything goes to Flask) unless the limiter and the cache share one Redis and the
limiter uses the `sliding-window-counter` strategy, while the cache's circuit breaker is open or
the cache owes writes from an outage, and when `FAST_READS_ENABLED` is false. A Redis error sends
the request to Flask and counts against the cache's breaker.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pybreaker
import redis

from app.core.cache import Cache, cache_key, decode_entry
from app.core.conditional import etag_for
from app.core.http_security import json_security_headers, negotiate_encoding
from app.core.metrics import request_recorder
from app.core.middleware import REQUEST_ID_RE, log_access

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask
    from limits import RateLimitItem

warnings = logging.getLogger(__name__)

CHARGED = "postboard.rate_limit_charged"  # environ key: the window of a hit already taken
UUID_PATH = r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
STRATEGY = "sliding-window-counter"
RENDERED_ENTRIES = 4096  # response bodies memoised per route and process (a few MB at most)
# Headers that make a GET something else than the plain anonymous read served here.
_STEP_ASIDE = (
    "HTTP_AUTHORIZATION",
    "HTTP_ORIGIN",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MATCH",
    "HTTP_TRANSFER_ENCODING",
)


class Charged(NamedTuple):
    """A rate-limit hit taken by the fast lane: what the X-RateLimit-* headers say."""

    limit: int
    remaining: int
    reset_at: int

    def headers(self) -> list[tuple[str, str]]:
        return [
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(self.reset_at)),
        ]


@dataclass(frozen=True)
class FastRead:
    """A route the fast lane answers from the cache."""

    pattern: re.Pattern[str]  # fullmatch on PATH_INFO; group 1 is the public id
    kind: str  # the cache kind its entries are stored under
    rule: str  # the Flask rule it stands for, as logs and metrics name it
    view: Callable[[dict[str, Any]], dict[str, Any] | None]  # entry data -> anonymous view


# limits' own two scripts (acquire an entry of a sliding-window counter, read the window), each
# verbatim as a local function (their KEYS and ARGV become its parameters), then the cache GET:
# the three in one EVALSHA. Not a pipeline of the three: redis-py packs, sends and parses each
# command of a pipeline on its own, and checks its scripts with SCRIPT EXISTS on every execute.
_FUSED = """
local function acquire(KEYS, ARGV)
{acquire}
end
local function window(KEYS, ARGV)
{window}
end
if not acquire({{KEYS[1], KEYS[2]}}, {{ARGV[1], ARGV[2], ARGV[3]}}) then
  return {{0}}
end
return {{1, window({{KEYS[1], KEYS[2]}}, {{ARGV[2]}}), redis.call('GET', KEYS[3])}}
"""


class _Plan(NamedTuple):
    """What the lane needs from the configured app, resolved once."""

    cache: Cache
    client: redis.Redis
    item: RateLimitItem  # the anonymous limit
    key_prefix: str
    storage: Any  # limits' RedisStorage (its key scheme)
    source: str  # _FUSED with limits' scripts in it
    sha: str  # its SHA1, for EVALSHA
    connect: Callable[[], redis.Connection]  # a new connection to the cache's Redis
    vary: str
    static_headers: list[tuple[str, str]]
    compress_min: int
    compress_algorithms: tuple[str, ...]
    dumps: Callable[[Any], str]


class _Link(threading.local):
    """This thread's own Redis connection for the lane.

    redis-py's `Connection`, without the client's pool and command layers: checking a pooled
    connection out and back in (with its readiness poll), the retry wrapper and the hooks cost
    about 50 us of CPU a call here, more than the rest of the lane; one connection per thread
    and process needs none of it. Any error drops the connection (a reply may be half read);
    the next call connects again.
    """

    connection: redis.Connection | None = None
    pid = 0

    def evalsha(self, plan: _Plan, *keys_and_args: str | int) -> Any:
        connection = self.connection
        if connection is None or self.pid != os.getpid():  # new, or inherited across a fork
            connection = self.connection = plan.connect()
            self.pid = os.getpid()
        command = ("EVALSHA", plan.sha, 3, *keys_and_args)
        try:
            try:
                connection.send_packed_command(connection.pack_command(*command), False)
                return connection.read_response()
            except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it
                plan.client.script_load(plan.source)
                connection.send_packed_command(connection.pack_command(*command), False)
                return connection.read_response()
        except BaseException:
            connection.disconnect()
            self.connection = None
            raise


class FastReads:
    """WSGI middleware answering `reads` from the cache (see the module docstring)."""

    def __init__(self, app: Flask, wsgi_app: WSGIApplication, reads: Iterable[FastRead]) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.reads = tuple(reads)
        self._plan: _Plan | None = None
        self._resolved = False
        self._recorders: dict[str, Callable[[float], None]] = {}
        self._link = _Link()
        self._renderers: dict[str, Callable[[bytes], tuple[int, bytes] | None]] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        match = self._match(environ)
        if match is not None:
            plan = self._plan if self._resolved else self._resolve()
            if plan is not None and plan.cache.breaker.current_state == "closed":
                answer = self._answer(plan, match[0], match[1], environ, started)
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.wsgi_app(environ, start_response)

    # Which requests -------------------------------------------------------------------------

    def _match(self, environ: WSGIEnvironment) -> tuple[FastRead, str] | None:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
            return None
        if environ.get("CONTENT_LENGTH") not in (None, "", "0"):
            return None
        for name in _STEP_ASIDE:
            if name in environ:
                return None
        path = environ.get("PATH_INFO", "")
        for read in self.reads:
            found = read.pattern.fullmatch(path)
            if found is not None:
                return read, found.group(1)
        return None

    def _resolve(self) -> _Plan | None:
        """The plan, or None when this app's configuration does not allow the lane."""
        plan = self._plan = _plan_for(self.app)
        if plan is not None:
            for read in self.reads:
                # A pure function of the entry's bytes, so memoised on them: a hot entry is
                # decoded and encoded once per process, not once per request.
                self._renderers[read.rule] = functools.lru_cache(maxsize=RENDERED_ENTRIES)(
                    functools.partial(_render, read, plan.dumps)
                )
        self._resolved = True
        return plan

    # Answering ------------------------------------------------------------------------------

    def _answer(
        self,
        plan: _Plan,
        read: FastRead,
        public_id: str,
        environ: WSGIEnvironment,
        started: float,
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """(status, headers, body) when served here; None to let Flask answer."""
        cache = plan.cache
        if cache.owes_writes:
            return None
        # flask-limiter's key for the shared default limit of an anonymous caller (client_key).
        identifiers = [f"ip:{environ.get('REMOTE_ADDR') or 'unknown'}", "api"]
        key = plan.item.key_for(*([plan.key_prefix] if plan.key_prefix else []), *identifiers)
        try:
            acquired, window, raw = self._round_trip(plan, key, cache_key(read.kind, public_id))
        except (redis.RedisError, OSError, pybreaker.CircuitBreakerError) as exc:
            # Flask answers, and its limiter and cache fall back as they do for any request.
            warnings.warning("fast_read_unavailable", extra={"error": type(exc).__name__})
            return None
        if not acquired:
            return None  # nothing was taken: Flask's limiter refuses it (429) the usual way
        charged = _charged(plan.item.amount, plan.item.get_expiry(), window)
        rendered = self._renderers[read.rule](raw) if raw else None
        if rendered is None or self._compressible(plan, rendered[1], environ):
            environ[CHARGED] = charged  # Flask answers, without taking a second hit
            return None
        version, body = rendered
        cache.note_read(read.kind, hit=True)
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("ETag", etag_for(version)),
            ("Cache-Control", "private, no-cache"),
            ("Vary", plan.vary),
            *charged.headers(),
            *plan.static_headers,
            ("X-Request-ID", request_id),
        ]
        self._record(read, environ, request_id, started)
        return "200 OK", headers, body

    def _round_trip(
        self, plan: _Plan, key: str, entry_key: str
    ) -> tuple[bool, Window, bytes | None]:
        """One script: take an entry of the caller's window, read the window, GET the entry."""
        storage, item = plan.storage, plan.item
        # limits' key scheme for the two windows of a sliding-window counter.
        current = storage.prefixed_key(f"{{{key}}}")
        previous = storage.prefixed_key(f"{{{key}}}/-1")
        with plan.cache.breaker.calling():
            reply = self._link.evalsha(
                plan, previous, current, entry_key, item.amount, item.get_expiry(), 1
            )
        if not reply[0]:
            return False, (0, 0.0, 0, 0.0), None
        return True, _window(reply[1]), reply[2]

    @staticmethod
    def _compressible(plan: _Plan, body: bytes, environ: WSGIEnvironment) -> bool:
        """True when flask-compress would encode this body: the full path answers it."""
        accept = environ.get("HTTP_ACCEPT_ENCODING")
        return (
            accept is not None
            and len(body) >= plan.compress_min
            and negotiate_encoding(accept, plan.compress_algorithms) is not None
        )

    def _record(
        self, read: FastRead, environ: WSGIEnvironment, request_id: str, started: float
    ) -> None:
        """The metrics and the access line `_finish` (app/core/middleware.py) would write."""
        elapsed = time.perf_counter() - started
        recorder = self._recorders.get(read.rule)
        if recorder is None:
            recorder = self._recorders[read.rule] = request_recorder("GET", read.rule, 200)
        recorder(elapsed)
        log_access(
            request_id,
            "GET",
            environ.get("PATH_INFO", ""),
            read.rule,
            200,
            round(elapsed * 1000, 2),
            None,
        )


def _render(read: FastRead, dumps: Callable[[Any], str], raw: bytes) -> tuple[int, bytes] | None:
    """(version, response body) of a stored entry, or None (a tombstone, or not servable here)."""
    entry = decode_entry(raw)
    view = read.view(entry["d"]) if entry is not None else None
    if entry is None or view is None:
        return None
    return int(entry["v"]), dumps({"data": view}).encode() + b"\n"


Window = tuple[int, float, int, float]  # limits: (previous count, its TTL s, current, its TTL s)


def _window(reply: list[Any] | None) -> Window:
    """The reply of limits' sliding-window script, read as `RedisStorage.get_sliding_window`."""
    if not reply:
        return 0, 0.0, 0, 0.0
    return (
        int(reply[0] or 0),
        max(0.0, float(reply[1] or 0)) / 1000,
        int(reply[2] or 0),
        max(0.0, float(reply[3] or 0)) / 1000,
    )


def _charged(amount: int, expiry: int, window: Window) -> Charged:
    """The X-RateLimit-* values after a hit, as flask-limiter derives them with limits 5.8
    (`SlidingWindowCounterRateLimiter.get_window_stats`, then `RequestLimit.reset_at`).
    tests/test_fast_reads.py pins the equality."""
    previous_count, previous_expires_in, current_count, current_expires_in = window
    weighted = previous_count * previous_expires_in / expiry + current_count
    remaining = max(0, amount - math.floor(weighted))
    now = time.time()
    if not (previous_count or current_count):
        return Charged(amount, remaining, int(now + 1))
    # `or`: the window is read in the instant of the hit, so a fresh key's TTL is exactly a
    # whole period, which limits' modulo turns into 0 s. flask-limiter reads it after the view,
    # a moment later, and gets just under a period: the same answer within a second.
    previous_reset_in = current_reset_in = math.inf
    if previous_count:
        period = expiry / previous_count
        previous_reset_in = previous_expires_in % period or period
    if current_count:
        current_reset_in = current_expires_in % expiry or expiry
    return Charged(amount, remaining, int(now + min(previous_reset_in, current_reset_in) + 1))


def _text(script: str | bytes) -> str:
    return script.decode() if isinstance(script, bytes) else script


def _plan_for(app: Flask) -> _Plan | None:
    """Resolve the limiter, the cache and the headers; None when the lane cannot be exact."""
    from limits import parse_many
    from limits.storage import RedisStorage

    from app.core.cache import RedisBackend, app_cache

    cfg = app.config
    limiter = app.extensions.get("limiter")
    if not cfg.get("FAST_READS_ENABLED", True) or limiter is None or not limiter.enabled:
        return None
    if cfg.get("RATELIMIT_STRATEGY") != STRATEGY or not cfg.get("RATELIMIT_HEADERS_ENABLED"):
        return None
    if not cfg.get("REDIS_URL") or cfg.get("RATELIMIT_STORAGE_URI") != cfg["REDIS_URL"]:
        return None
    items = parse_many(str(cfg["RATELIMIT_ANONYMOUS"]))
    if len(items) != 1:
        return None  # several limits ("10/second;300/minute"): flask-limiter's business
    with app.app_context():
        cache = app_cache()
        storage = limiter.storage
    if not isinstance(cache.backend, RedisBackend) or not isinstance(storage, RedisStorage):
        return None
    compress = cfg.get("COMPRESS_ALGORITHM") or ()
    source = _FUSED.format(
        acquire=_text(storage.SCRIPT_ACQUIRE_SLIDING_WINDOW),
        window=_text(storage.SCRIPT_SLIDING_WINDOW),
    )
    pool = cache.backend.client.connection_pool
    return _Plan(
        cache=cache,
        client=cache.backend.client,
        item=items[0],
        key_prefix=str(cfg.get("RATELIMIT_KEY_PREFIX", "")),
        storage=storage,
        source=source,
        sha=hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(),  # Redis names it so
        connect=lambda: pool.connection_class(**pool.connection_kwargs),
        # As the full path merges it: the view's, CORS's (when origins are allowed), compression's.
        vary="Authorization, Origin, Accept-Encoding"
        if cfg.get("CORS_ORIGINS")
        else "Authorization, Accept-Encoding",
        static_headers=json_security_headers(cfg),
        compress_min=int(cfg.get("COMPRESS_MIN_SIZE", 1024)),
        compress_algorithms=tuple([compress] if isinstance(compress, str) else compress),
        dumps=lambda obj: app.json.dumps(obj, separators=(",", ":"), indent=None),
    )
