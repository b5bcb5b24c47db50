"""The webhook settings in one typed object, for the routes (target checks, the per-user limit)
and the delivery side (timeouts, retries, breaker, response cap)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import current_app


@dataclass(frozen=True)
class WebhookPolicy:
    allow_http: bool
    allow_private: bool
    queue: str
    timeout_seconds: float
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    breaker_failures: int
    breaker_reset_seconds: float
    max_response_bytes: int
    per_user: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WebhookPolicy:
        """The policy of a Flask config (the WEBHOOKS_* keys of app/settings)."""
        return cls(
            allow_http=bool(config["WEBHOOKS_ALLOW_HTTP"]),
            allow_private=bool(config["WEBHOOKS_ALLOW_PRIVATE"]),
            queue=str(config["WEBHOOKS_QUEUE"]),
            timeout_seconds=float(config["WEBHOOKS_TIMEOUT_SECONDS"]),
            max_attempts=int(config["WEBHOOKS_MAX_ATTEMPTS"]),
            backoff_base_seconds=float(config["WEBHOOKS_BACKOFF_BASE_SECONDS"]),
            backoff_max_seconds=float(config["WEBHOOKS_BACKOFF_MAX_SECONDS"]),
            breaker_failures=int(config["WEBHOOKS_BREAKER_FAILURES"]),
            breaker_reset_seconds=float(config["WEBHOOKS_BREAKER_RESET_SECONDS"]),
            max_response_bytes=int(config["WEBHOOKS_MAX_RESPONSE_BYTES"]),
            per_user=int(config["WEBHOOKS_PER_USER"]),
        )


def policy() -> WebhookPolicy:
    """The current app's webhook policy."""
    return WebhookPolicy.from_config(current_app.config)
