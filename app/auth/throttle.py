"""Attempt counters in a moving window: failed logins, current-password guesses, email changes.

Failed logins are counted per (email, client address) and per email (see
docs/decisions/0015-login-throttling-without-lockout.md): after `LOGIN_ACCOUNT_MAX_FAILURES`
failures of one pair within `LOGIN_ACCOUNT_WINDOW_SECONDS` that pair is refused (429) until the
oldest leaves the window, so one address cannot guess on; after
`LOGIN_ACCOUNT_SPREAD_MAX_FAILURES` failures of one email from anywhere, only addresses that
logged in to it successfully before may still try, so a botnet cannot either, and the owner,
at home, is never locked out. Only failures are counted,
for unknown emails too, so the answers are the same whether or not the account exists. Emails
are counted under a keyed hash, never in the clear.

The counters live in Redis when `REDIS_URL` is set (shared by every web process), in process
memory otherwise. If the store is unreachable the lock fails open (the per-IP login limit still
applies) and says so with a `login_throttle_unavailable` security event.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from flask import Flask, current_app
from limits import RateLimitItemPerSecond, parse
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.core.audit import security_event
from app.core.redis_client import redis_budget

KEY_PREFIX = "postboard:login-failures"  # Redis keys: under the service's own prefix
GUESS_PREFIX = "postboard:password-failures"  # wrong current_password guesses, per user
SPREAD_PREFIX = "postboard:login-failures-spread"  # failed logins per email, any address
KNOWN_PREFIX = "postboard:login-known"  # addresses that logged in to an email successfully
EMAIL_CHANGE_PREFIX = "postboard:email-changes"  # email changes, per user and per address
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

    def __init__(
        self,
        uri: str,
        max_failures: int,
        window_seconds: int,
        *,
        prefix: str = KEY_PREFIX,
        event: str = "login_throttle_unavailable",
    ) -> None:
        self.enabled = max_failures > 0
        self.event = event
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.item = RateLimitItemPerSecond(max(1, max_failures), window_seconds, "account")
        options: dict[str, Any] = {"wrap_exceptions": True}
        if not uri.startswith("memory://"):
            # The service's Redis budget: a dead Redis must not hang a login.
            options.update(key_prefix=prefix, **redis_budget())
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

    def hit(self, key: str) -> bool:
        """Count one attempt if the window has room: False when it has none (refused)."""
        if not self.enabled:
            return True
        try:
            return self.limiter.hit(self.item, key)
        except self._errors:
            self._unavailable("hit")
            return True

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key`'s window has room again (at least 1)."""
        try:
            reset_at = self.limiter.get_window_stats(self.item, key).reset_time
        except self._errors:
            return 1
        return max(1, math.ceil(reset_at - time.time()))

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
        security_event(self.event, op=op, fail_open=True)


def named_throttle(
    name: str, build: Callable[[dict[str, Any], str], AccountThrottle], app: Flask | None = None
) -> AccountThrottle:
    """The app's throttle `name`, built on first use (one per app: a memory store is per
    process)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    key = f"{_EXTENSION}.{name}"
    throttle = app.extensions.get(key)
    if throttle is None:
        with _lock:
            throttle = app.extensions.get(key)
            if throttle is None:
                throttle = build(app.config, storage_uri(app.config.get("REDIS_URL")))
                app.extensions[key] = throttle
    return cast(AccountThrottle, throttle)


def account_throttle(app: Flask | None = None) -> AccountThrottle:
    """Failed logins per (email, client address)."""
    return named_throttle(
        "pair",
        lambda cfg, uri: AccountThrottle(
            uri, int(cfg["LOGIN_ACCOUNT_MAX_FAILURES"]), int(cfg["LOGIN_ACCOUNT_WINDOW_SECONDS"])
        ),
        app,
    )


def spread_throttle(app: Flask | None = None) -> AccountThrottle:
    """Failed logins per email, from every address together."""
    return named_throttle(
        "spread",
        lambda cfg, uri: AccountThrottle(
            uri,
            int(cfg["LOGIN_ACCOUNT_SPREAD_MAX_FAILURES"]),
            int(cfg["LOGIN_ACCOUNT_WINDOW_SECONDS"]),
            prefix=SPREAD_PREFIX,
        ),
        app,
    )


def known_addresses(app: Flask | None = None) -> AccountThrottle:
    """(email, address) pairs that logged in successfully: one hit marks a pair known for as
    long as a refresh token of that login may live."""
    return named_throttle(
        "known",
        lambda cfg, uri: AccountThrottle(
            uri,
            1,
            int(cfg["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds()),
            prefix=KNOWN_PREFIX,
        ),
        app,
    )


def password_throttle(app: Flask | None = None) -> AccountThrottle:
    """Wrong `current_password` guesses per user: the login limits, counted on their own."""
    return named_throttle(
        "password",
        lambda cfg, uri: AccountThrottle(
            uri,
            int(cfg["LOGIN_ACCOUNT_MAX_FAILURES"]),
            int(cfg["LOGIN_ACCOUNT_WINDOW_SECONDS"]),
            prefix=GUESS_PREFIX,
        ),
        app,
    )


def email_change_throttle(app: Flask | None = None) -> AccountThrottle:
    """Email changes per user and per address, at the registration rate (both answer whether
    an email is taken); off with RATELIMIT_ENABLED=false, like every rate limit."""

    def build(cfg: dict[str, Any], uri: str) -> AccountThrottle:
        rule = parse(str(cfg["RATELIMIT_REGISTER"]))
        amount = rule.amount if cfg.get("RATELIMIT_ENABLED", True) else 0
        return AccountThrottle(
            uri, amount, rule.get_expiry(), prefix=EMAIL_CHANGE_PREFIX, event="throttle_unavailable"
        )

    return named_throttle("email", build, app)
