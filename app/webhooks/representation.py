"""The JSON representations of a webhook and of a delivery with its attempts (the marshmallow
schemas only document them). A webhook's secret appears only in `created_webhook`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def public_webhook(webhook: Webhook) -> dict[str, Any]:
    """Every field but the secret, JSON-ready, in the documented order."""
    return {
        "id": str(webhook.public_id),
        "url": webhook.url,
        "events": list(webhook.events),
        "description": webhook.description,
        "active": webhook.active,
        "disabled_reason": webhook.disabled_reason,
        "created_at": webhook.created_at.isoformat(),
        "updated_at": webhook.updated_at.isoformat(),
        "version": webhook.version,
    }


def created_webhook(webhook: Webhook) -> dict[str, Any]:
    """The answer to its creation: the one place the secret is shown."""
    return {**public_webhook(webhook), "secret": webhook.secret}


def public_attempt(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "started_at": attempt.started_at.isoformat(),
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "next_retry_at": _iso(attempt.next_retry_at),
    }


def public_delivery(
    delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt]
) -> dict[str, Any]:
    """A delivery and its attempt log (oldest first); the payload itself is not repeated."""
    return {
        "id": str(delivery.public_id),
        "event_id": str(delivery.event_id),
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "created_at": delivery.created_at.isoformat(),
        "delivered_at": _iso(delivery.delivered_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "attempts_log": [public_attempt(a) for a in attempts],
    }
