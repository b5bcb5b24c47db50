"""Rate limits: one sliding-window counter per caller, hit and read in one Redis round trip.

Per user when the bearer token is validly signed, per client IP otherwise; one budget per caller
for the whole API (scope "api"), unless a route declares its own limit with `route_limit` (login
and registration do, per IP), which then replaces the shared one for that route. Shared by every
web process through Redis when REDIS_URL is set; in process memory on the embedded default, and
in process memory while Redis is unreachable (a limit may then admit up to limit x processes;
no request fails; the shared Redis breaker of app/core/redis_client.py decides when to try again).

Why not flask-limiter: it takes the hit with one EVALSHA before the view and reads the window
for the X-RateLimit-* headers with a second one after it, and limits' storage API has no call
that does both. Our script below (a sliding-window counter: the previous window's count weighted
by how much of it still overlaps, plus the current one) admits-and-counts and returns both counts
in one call, and the pipeline sends it in the same round trip as the caller's other reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pybreaker
import redis
from flask import Flask, g, request
from limits import parse_many

from app.core.audit import security_event
from app.core.redis_client import REDIS_ERRORS, redis_breaker, skip_redis
from app.settings import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
_FAILURES: tuple[type[BaseException], ...] = (pybreaker.CircuitBreakerError, *REDIS_ERRORS)

# Probes, metrics and docs are never limited: an orchestrator must always reach them.
EXEMPT_BLUEPRINTS = frozenset({"ops", "api-docs"})
EXEMPT_ENDPOINTS = frozenset({"swagger_ui_static", "metrics"})
ROUTE_LIMIT_ATTR = "_route_limit"  # set by @route_limit on a view (method) function
RATE_LIMITS_DIR = "rate-limits"  # under CACHE_DIR: the embedded default's shared counters

# KEYS[1] = this window's counter, KEYS[2] = the previous window's; ARGV = limit, period (ms),
# ms elapsed in this window. Returns {admitted (1/0), previous count, current count}.
SLIDING_WINDOW = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local period = tonumber(ARGV[2])
local used = math.floor(previous * (period - tonumber(ARGV[3])) / period) + current
if used >= tonumber(ARGV[1]) then
  return {0, previous, current}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('PEXPIRE', KEYS[1], 2 * period)
end
return {1, previous, current}
"""


@dataclass(frozen=True)
class Rule:
    """One limit: `amount` requests per `seconds`."""

    amount: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rule:
        items = parse_many(text)
        if len(items) != 1:
            raise ConfigError(f"rate limit {text!r}: give exactly one limit, such as 100/minute")
        return cls(items[0].amount, items[0].get_expiry())


@dataclass(frozen=True)
class Window:
    """The caller's window right after a hit (or a refused one): what the headers say."""

    rule: Rule
    admitted: bool
    previous: int
    current: int
    elapsed: float  # seconds into the current fixed window
    now: float

    @property
    def used(self) -> int:
        period = self.rule.seconds
        return math.floor(self.previous * (period - self.elapsed) / period) + self.current

    def retry_after(self) -> float:
        """Seconds until one more request would be admitted (0 if one would be now)."""
        amount, period = self.rule.amount, self.rule.seconds
        if self.used < amount:
            return 0.0
        if self.current < amount:  # wait until the previous window's weight has decayed enough
            return max(0.0, period * (1 - (amount - self.current) / self.previous) - self.elapsed)
        # this window alone is full: the next one, where it becomes the decaying previous one
        return period - self.elapsed + max(0.0, period * (1 - amount / self.current))

    def headers(self) -> dict[str, str]:
        remaining = max(0, self.rule.amount - self.used)
        wait = self.retry_after() if remaining == 0 else self.rule.seconds - self.elapsed
        headers = {
            "X-RateLimit-Limit": str(self.rule.amount),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(self.now + wait) + 1),
        }
        if not self.admitted:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after())))
        return headers


class MemoryCounters:
    """The same counters in this process (the embedded default, and the fallback)."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, expires at)
        self._lock = threading.Lock()

    def hit(self, keys: tuple[str, str], amount: int, period_ms: int, elapsed_ms: int) -> list[int]:
        now = time.monotonic()
        with self._lock:
            if len(self._counts) > 10000:  # forget expired windows now and then
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            current, previous = (self._get(key, now) for key in keys)
            if math.floor(previous * (period_ms - elapsed_ms) / period_ms) + current >= amount:
                return [0, previous, current]
            expires = self._counts.get(keys[0], (0, now + 2 * period_ms / 1000))[1]
            self._counts[keys[0]] = (current + 1, expires)
            return [1, previous, current + 1]

    def _get(self, key: str, now: float) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > now else 0


class DiskCounters:
    """The same counters in a diskcache directory (SQLite underneath) that every process on the
    host shares: the embedded default has no Redis, and a limit must hold across its gunicorn
    workers (contract §6). Each hit is one diskcache transaction, atomic across processes."""

    def __init__(self, directory: Path) -> None:
        import diskcache

        self.cache = diskcache.Cache(str(directory), timeout=1)

    def hit(self, keys: tuple[str, str], amount: int, period_ms: int, elapsed_ms: int) -> list[int]:
        with self.cache.transact():
            current = int(self.cache.get(keys[0], 0))
            previous = int(self.cache.get(keys[1], 0))
            if math.floor(previous * (period_ms - elapsed_ms) / period_ms) + current >= amount:
                return [0, previous, current]
            self.cache.set(keys[0], current + 1, expire=2 * period_ms / 1000)
            return [1, previous, current + 1]


class RateLimiter:
    """Hits a caller's window and runs the pipeline's other Redis reads in the same round trip."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        breaker: pybreaker.CircuitBreaker,
        limit_in_redis: bool,
        prefix: str,
        shared_directory: Path | None = None,
    ) -> None:
        self.client = client
        self.breaker = breaker  # decides when a failed Redis is tried again (in memory till then)
        self.limit_in_redis = limit_in_redis and client is not None
        self.prefix = prefix
        # Without Redis, counters every process of the host shares; while Redis fails, this
        # process' own (a brief fallback, not worth a disk write per request).
        self.memory: MemoryCounters | DiskCounters = (
            DiskCounters(shared_directory) if shared_directory is not None else MemoryCounters()
        )
        self._sha: str | None = None  # the script's SHA, loaded on first use

    def round_trip(
        self, hit: tuple[str, Rule] | None, reads: list[tuple[Any, ...]]
    ) -> tuple[Window | None, list[Any] | None]:
        """Take `hit` (key, rule) when given and run `reads` (Redis commands): one round trip.

        The reads' replies are None when Redis is absent or failed (callers then fall back)."""
        now = time.time()
        args = self._hit_args(hit, now) if hit is not None else None
        use_redis = self.client is not None and not skip_redis(self.breaker)
        replies: list[Any] | None = None
        counts: list[int] | None = None
        in_redis = args is not None and self.limit_in_redis
        if use_redis and (reads or in_redis):
            try:
                with self.breaker.calling():
                    replies = self._execute(args if in_redis else None, reads)
            except _FAILURES as exc:
                log.warning("rate_limit_store_unavailable", extra={"error": type(exc).__name__})
                replies = None
            if replies is not None and in_redis:
                counts = [int(n) for n in replies.pop(0)]
        if args is not None and counts is None:
            counts = self.memory.hit(*args)
        if hit is None or counts is None or args is None:
            return None, replies
        return Window(hit[1], bool(counts[0]), counts[1], counts[2], args[3] / 1000, now), replies

    def _hit_args(self, hit: tuple[str, Rule], now: float) -> tuple[tuple[str, str], int, int, int]:
        key, rule = hit
        period_ms = rule.seconds * 1000
        now_ms = int(now * 1000)
        index = now_ms // period_ms
        base = f"{self.prefix}:rl:{rule.amount}/{rule.seconds}:{key}:"
        return (
            (base + str(index), base + str(index - 1)),
            rule.amount,
            period_ms,
            now_ms % period_ms,
        )

    def _execute(
        self, args: tuple[tuple[str, str], int, int, int] | None, reads: list[tuple[Any, ...]]
    ) -> list[Any]:
        if self.client is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("client is not set")
        pipe = self.client.pipeline(transaction=False)
        if args is not None:
            if self._sha is None:
                self._sha = self.client.script_load(SLIDING_WINDOW)
            (current, previous), amount, period_ms, elapsed_ms = args
            pipe.evalsha(self._sha, 2, current, previous, amount, period_ms, elapsed_ms)
        for command in reads:
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        if args is not None and isinstance(replies[0], redis.exceptions.NoScriptError):
            self._sha = self.client.script_load(SLIDING_WINDOW)  # Redis restarted or flushed
            (current, previous), amount, period_ms, elapsed_ms = args
            replies[0] = self.client.evalsha(
                self._sha, 2, current, previous, amount, period_ms, elapsed_ms
            )
        for reply in replies:
            if isinstance(reply, redis.RedisError):
                raise reply
        return list(replies)


def route_limit(setting: str, *, per: str = "ip") -> Callable[[F], F]:
    """Give a view its own limit (the setting naming it, e.g. "RATELIMIT_LOGIN"), keyed per IP,
    instead of the caller's shared budget: a domain route declares it, core applies it."""
    if per != "ip":
        raise ValueError("route limits are per IP")

    def decorator(view: F) -> F:
        setattr(view, ROUTE_LIMIT_ATTR, setting)
        return view

    return decorator


def declared_limit(app: Flask, endpoint: str, method: str) -> str | None:
    """The setting a route's view declared with @route_limit, or None (the shared budget)."""
    view = app.view_functions.get(endpoint)
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, method.lower(), None) if view_class is not None else view
    return getattr(handler, ROUTE_LIMIT_ATTR, None)


def route_limit_settings(app: Flask) -> set[str]:
    """The settings every @route_limit of `app`'s views names."""
    found = set()
    for view in app.view_functions.values():
        view_class = getattr(view, "view_class", None)
        handlers = [getattr(view_class, m, None) for m in ("get", "post", "put", "patch", "delete")]
        for handler in handlers if view_class is not None else [view]:
            if (setting := getattr(handler, ROUTE_LIMIT_ATTR, None)) is not None:
                found.add(setting)
    return found


def client_ip() -> str:
    """The client address; ProxyFix has already applied X-Forwarded-For when (and only when)
    TRUSTED_PROXY_COUNT says how many proxies to trust."""
    return request.remote_addr or "unknown"


def caller_subject() -> str | None:
    """The `sub` of the request's validly signed bearer token (the pipeline identified it)."""
    caller = g.get("caller")
    return caller.subject if caller is not None else None


def client_key() -> str:
    subject = caller_subject()
    return f"user:{subject}" if subject else f"ip:{client_ip()}"


def ip_key() -> str:
    return f"ip:{client_ip()}"


def configure_limiter(app: Flask) -> RateLimiter:
    """This app's limiter (apps built side by side, as in tests, each have their own)."""
    from app.core.redis_client import get_redis

    cfg: dict[str, Any] = app.config
    cfg.setdefault("RATELIMIT_STORAGE_URI", cfg.get("REDIS_URL") or "disk://")
    for name in ("RATELIMIT_ANONYMOUS", "RATELIMIT_AUTHENTICATED", *route_limit_settings(app)):
        Rule.parse(str(cfg[name]))  # one limit per setting, refused at start-up if not
    client = get_redis(cfg.get("REDIS_URL"))
    limiter = RateLimiter(
        client,
        breaker=redis_breaker(
            f"ratelimit@{cfg.get('REDIS_URL')}", cfg, probe=client.ping if client else None
        ),
        limit_in_redis=cfg["RATELIMIT_STORAGE_URI"] == cfg.get("REDIS_URL"),
        prefix=str(cfg.get("RATELIMIT_KEY_PREFIX", "postboard")),
        shared_directory=(
            Path(cfg["CACHE_DIR"]) / RATE_LIMITS_DIR
            if cfg["RATELIMIT_STORAGE_URI"] == "disk://"
            else None
        ),
    )
    app.extensions["rate_limiter"] = limiter
    return limiter


def request_hit(app: Flask) -> tuple[str, Rule] | None:
    """(key, rule) this request is charged against, or None when it is not limited."""
    cfg = app.config
    endpoint = request.endpoint
    if not cfg.get("RATELIMIT_ENABLED", True) or endpoint is None:
        return None
    if request.blueprint in EXEMPT_BLUEPRINTS or endpoint in EXEMPT_ENDPOINTS:
        return None
    setting = declared_limit(app, endpoint, request.method)
    if setting is not None:
        return route_hit(cfg, setting)
    if caller_subject():
        return f"api:{client_key()}", _rule(cfg, "RATELIMIT_AUTHENTICATED")
    return f"api:{client_key()}", _rule(cfg, "RATELIMIT_ANONYMOUS")


def route_hit(cfg: Any, setting: str) -> tuple[str, Rule]:
    """(key, rule) of a declared limit: keyed by the setting, so every door to the same action
    (a REST route, a GraphQL mutation) draws on one budget per client IP."""
    return f"{setting}:{ip_key()}", _rule(cfg, setting)


def charge(app: Flask, setting: str) -> Window | None:
    """Take one hit on a declared limit inside a handler (a GraphQL mutation doing what a limited
    route does); returns the window when it refused the hit (the caller raises RateLimited with
    its headers), None when admitted or limits are off."""
    if not app.config.get("RATELIMIT_ENABLED", True):
        return None
    window, _ = app.extensions["rate_limiter"].round_trip(route_hit(app.config, setting), [])
    if window is None or window.admitted:
        return None
    on_breach(window)
    return window


def on_breach(window: Window) -> None:
    """A `rate_limited` security event for a refused hit (no credential in it)."""
    security_event(
        "rate_limited",
        key=client_key(),
        limit=f"{window.rule.amount} per {window.rule.seconds} second",
        path=request.path,
        method=request.method,
    )


_rules: dict[str, Rule] = {}


def _rule(cfg: Any, setting: str) -> Rule:
    text = str(cfg[setting])
    rule = _rules.get(text)
    if rule is None:
        rule = _rules[text] = Rule.parse(text)
    return rule
