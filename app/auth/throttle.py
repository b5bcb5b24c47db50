"""The per-account login lock: failed logins counted per email, in a moving window.

After `LOGIN_ACCOUNT_MAX_FAILURES` failures for one email within `LOGIN_ACCOUNT_WINDOW_SECONDS`,
logins for that email are refused until the oldest of those failures leaves the window. Only
failures are counted (a successful login clears the count), for unknown emails too, so the lock
behaves the same whether or not the account exists. Emails are counted under a keyed hash,
never in the clear.

The counters live in Redis when `REDIS_URL` is set (shared by every web process), in process
memory otherwise. If the store is unreachable the lock fails open (the per-IP login limit still
applies) and says so with a `login_throttle_unavailable` security event.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Any

from flask import Flask, current_app
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.core.audit import security_event
from app.core.redis_client import redis_budget

KEY_PREFIX = "postboard:login-failures"  # Redis keys: under the service's own prefix
_EXTENSION = "postboard.account_throttle"
_lock = threading.Lock()


def email_fingerprint(email: str, secret: str) -> str:
    """A stable, non-reversible id for an email (lower-cased): HMAC-SHA256 keyed with the app's
    SECRET_KEY, so a log line or a Redis key names the account without revealing the address and
    cannot be matched against a list of known emails without the key."""
    digest = hmac.new(secret.encode(), email.strip().lower().encode(), hashlib.sha256)
    return digest.hexdigest()


def storage_uri(redis_url: str | None) -> str:
    """limits' scheme for the configured Redis (`redis://`, `rediss://`, `redis+unix://`)."""
    if not redis_url:
        return "memory://"
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url.removeprefix("unix://")
    return redis_url


class AccountThrottle:
    """Failed-login counters per account; every call fails open when the store is unreachable."""

    def __init__(self, uri: str, max_failures: int, window_seconds: int) -> None:
        self.enabled = max_failures > 0
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.item = RateLimitItemPerSecond(max(1, max_failures), window_seconds, "account")
        options: dict[str, Any] = {"wrap_exceptions": True}
        if not uri.startswith("memory://"):
            # The service's Redis budget: a dead Redis must not hang a login.
            options.update(key_prefix=KEY_PREFIX, **redis_budget())
        storage = storage_from_string(uri, **options)
        if not isinstance(storage, Storage):  # an async+ scheme: not for this sync code
            raise ValueError(f"not a synchronous limits storage: {uri.split(':', 1)[0]}")
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(self.storage)
        base = self.storage.base_exceptions
        self._errors: tuple[type[Exception], ...] = (
            (StorageError, *base) if isinstance(base, tuple) else (StorageError, base)
        )

    def is_locked(self, key: str) -> bool:
        """True while `key` has used up its failures in the window (False if the store is down)."""
        if not self.enabled:
            return False
        try:
            return not self.limiter.test(self.item, key)
        except self._errors:
            self._unavailable("check")
            return False

    def record_failure(self, key: str) -> bool:
        """Count one failure; True when it reached the threshold (the account is now locked)."""
        if not self.enabled:
            return False
        try:
            self.limiter.hit(self.item, key)
            return self.limiter.get_window_stats(self.item, key).remaining <= 0
        except self._errors:
            self._unavailable("record")
            return False

    def reset(self, key: str) -> None:
        """Forget `key`'s failures (after a successful login)."""
        if not self.enabled:
            return
        try:
            self.limiter.clear(self.item, key)
        except self._errors:
            self._unavailable("reset")

    def reset_all(self) -> None:
        """Forget every account's failures (tests, operators)."""
        self.storage.reset()

    def _unavailable(self, op: str) -> None:
        security_event("login_throttle_unavailable", op=op, fail_open=True)


def account_throttle(app: Flask | None = None) -> AccountThrottle:
    """The app's throttle, built on first use (one per app: its memory store is per process)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    throttle = app.extensions.get(_EXTENSION)
    if throttle is None:
        with _lock:
            throttle = app.extensions.get(_EXTENSION)
            if throttle is None:
                throttle = AccountThrottle(
                    storage_uri(app.config.get("REDIS_URL")),
                    int(app.config["LOGIN_ACCOUNT_MAX_FAILURES"]),
                    int(app.config["LOGIN_ACCOUNT_WINDOW_SECONDS"]),
                )
                app.extensions[_EXTENSION] = throttle
    return throttle
