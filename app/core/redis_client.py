"""Every Redis client of the service, built with one small time budget.

redis-py 8's defaults retry a failed call 10 times with backoff and wait up to 5 s on a socket:
with Redis dead a request would stall for seconds before any fallback ran. Here every client
(cache, blocklist, rate-limit storage, Celery broker and results as the web publishes them) fails
within about `socket_timeout` and does not retry; a circuit breaker (state in process memory,
never in the Redis it protects) decides when to try Redis again. See docs/operations-failures.md.

The budget comes from the app config when one is active (`REDIS_SOCKET_TIMEOUT_SECONDS`,
`REDIS_CONNECT_TIMEOUT_SECONDS`, `REDIS_BREAKER_FAIL_MAX`, `REDIS_BREAKER_RESET_SECONDS`), else
from the defaults below.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pybreaker
import redis
from flask import current_app, has_app_context
from redis.backoff import NoBackoff
from redis.retry import Retry

# Defaults: a healthy Redis on the LAN answers in well under a millisecond; a quarter second
# is a stall, not a slow answer.
SOCKET_TIMEOUT_SECONDS = 0.25
CONNECT_TIMEOUT_SECONDS = 0.25
BREAKER_FAIL_MAX = 3
BREAKER_RESET_SECONDS = 5.0
# kombu blocks in BRPOP for about a second on a worker's broker connection: its reads need longer.
CONSUMER_SOCKET_TIMEOUT_SECONDS = 10.0

# The errors a call to an unreachable or stalled Redis raises.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)

_clients: dict[str, redis.Redis] = {}
_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_lock = threading.Lock()


def _setting(config: Mapping[str, Any] | None, name: str, default: float) -> float:
    if config is None and has_app_context():
        config = current_app.config
    value = (config or {}).get(name)
    return float(value) if value is not None else default


def redis_budget(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for `redis.Redis` / `redis.from_url`: short socket timeouts, no retry."""
    return {
        "socket_timeout": _setting(config, "REDIS_SOCKET_TIMEOUT_SECONDS", SOCKET_TIMEOUT_SECONDS),
        "socket_connect_timeout": _setting(
            config, "REDIS_CONNECT_TIMEOUT_SECONDS", CONNECT_TIMEOUT_SECONDS
        ),
        # No retry inside the call: the caller falls back at once, the breaker retries later.
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 30,
    }


def get_redis(url: str | None) -> redis.Redis | None:
    """One client (connection pool) per URL and process; None when Redis is not configured."""
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = redis.Redis.from_url(url, **redis_budget())
    return client


class ProbeWhenOpen(pybreaker.CircuitBreakerListener):
    """The breaker's trial call, made from a timer thread instead of by a request.

    pybreaker lets the first caller after the reset timeout try again; with a hung Redis that
    caller (and every request queued behind it in a sync worker) waits a socket timeout, every
    reset interval. With this listener callers skip Redis while the breaker is not closed
    (`skip_redis`), and `probe` (a PING) runs once per reset timeout until it succeeds.
    """

    def __init__(self, probe: Callable[[], object]) -> None:
        self.probe = probe
        self._scheduled = 0

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            self._schedule(cb)

    def _schedule(self, cb: pybreaker.CircuitBreaker) -> None:
        self._scheduled += 1
        timer = threading.Timer(cb.reset_timeout + 0.01, self._try, args=(cb,))
        timer.daemon = True
        timer.start()

    def _try(self, cb: pybreaker.CircuitBreaker) -> None:
        scheduled = self._scheduled
        # Still down: the breaker reopened (and the listener rescheduled this probe).
        with contextlib.suppress(Exception), cb.calling():
            self.probe()
        if cb.current_state == pybreaker.STATE_OPEN and self._scheduled == scheduled:
            self._schedule(cb)  # the timer fired before the breaker would allow a trial


def skip_redis(breaker: pybreaker.CircuitBreaker) -> bool:
    """True while a breaker that probes in the background is not closed: skip Redis."""
    return breaker.current_state != pybreaker.STATE_CLOSED and any(
        isinstance(listener, ProbeWhenOpen) for listener in breaker.listeners
    )


def redis_breaker(
    name: str,
    config: Mapping[str, Any] | None = None,
    *,
    probe: Callable[[], object] | None = None,
) -> pybreaker.CircuitBreaker:
    """A circuit breaker per `name` (a use and the Redis it calls, e.g. "blocklist@host:6379/0")
    and process, its state in memory: after a few failed calls it opens and callers skip Redis
    until a trial call succeeds: `probe`'s, from a timer thread, when given (see ProbeWhenOpen);
    else the first caller's after the reset timeout."""
    breaker = _breakers.get(name)
    if breaker is None:
        with _lock:
            breaker = _breakers.get(name)
            if breaker is None:
                breaker = _breakers[name] = pybreaker.CircuitBreaker(
                    fail_max=int(_setting(config, "REDIS_BREAKER_FAIL_MAX", BREAKER_FAIL_MAX)),
                    reset_timeout=_setting(
                        config, "REDIS_BREAKER_RESET_SECONDS", BREAKER_RESET_SECONDS
                    ),
                    name=name,
                    listeners=[ProbeWhenOpen(probe)] if probe is not None else [],
                )
    return breaker


def limiter_storage_options(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`RATELIMIT_STORAGE_OPTIONS` for a Redis storage: limits passes them to `redis.from_url`,
    so a dead Redis costs one short timeout before flask-limiter's in-memory fallback takes over
    (and its periodic health check is as short)."""
    return redis_budget(config)


def celery_transport_options(
    broker_url: str,
    backend_url: str | None = None,
    *,
    consumer: bool = False,
    visibility_timeout: int | None = None,
) -> dict[str, Any]:
    """Celery settings that bound every Redis call of the broker and the result backend.

    `consumer=False` (the web and the CLI, which only publish): a publish to a dead broker gives
    up within about a second instead of stalling the reply; the task is lost, which the callers
    accept (the write committed, its cache tombstone already invalidated the entry).
    `consumer=True` (a worker): connects as fast, but keeps a socket timeout longer than kombu's
    blocking BRPOP, and reconnects by itself. Merge into `celery.conf.update(...)`; non-Redis
    URLs get nothing. `visibility_timeout` goes into both transports' options (Redis re-delivers
    an unacked task after it).
    """
    budget = redis_budget()
    connect = budget["socket_connect_timeout"]
    read = (
        max(CONSUMER_SOCKET_TIMEOUT_SECONDS, budget["socket_timeout"])
        if consumer
        else budget["socket_timeout"]
    )
    options: dict[str, Any] = {}
    visibility = {} if visibility_timeout is None else {"visibility_timeout": visibility_timeout}
    if _is_redis(broker_url):
        transport = {
            **visibility,
            "socket_timeout": read,
            "socket_connect_timeout": connect,
            "retry_on_timeout": False,
        }
        if not consumer:
            # kombu's ensure_connection policy for the producer: one retry, no long sleep.
            transport.update(max_retries=1, interval_start=0, interval_step=0.1, interval_max=0.1)
            options["broker_connection_timeout"] = connect
            options["task_publish_retry_policy"] = {
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.1,
                "interval_max": 0.1,
            }
        options["broker_transport_options"] = transport
    if backend_url and _is_redis(backend_url):
        options.update(
            redis_socket_timeout=read,
            redis_socket_connect_timeout=connect,
            redis_retry_on_timeout=False,
            result_backend_transport_options={
                **visibility,
                "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
            },
        )
    return options


def _is_redis(url: str) -> bool:
    return str(url).startswith(("redis://", "rediss://", "unix://", "redis+socket://"))


def close_all() -> None:
    """Close every pool (worker exit, graceful shutdown)."""
    for client in _clients.values():
        client.close()
    _clients.clear()
