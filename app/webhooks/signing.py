"""What a delivery sends: the body, built once per delivery, and the Standard Webhooks headers,
signed anew for every attempt (the timestamp is the attempt's) with the `standardwebhooks`
library, so any receiver using that specification's libraries verifies it unmodified."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook as Signer


def payload(event: Mapping[str, Any]) -> str:
    """The body of every attempt of one event's delivery: `{"type", "timestamp", "data"}`, where
    `data` is the event as the feed carries it (app/core/events.py `event_json`) and `timestamp`
    when it happened. Compact JSON, ASCII only: the exact bytes that are signed and sent."""
    body = {"type": event["type"], "timestamp": event.get("occurred_at"), "data": dict(event)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


def headers(secret: str, delivery_id: str, body: str, *, now: float) -> dict[str, str]:
    """`webhook-id` (the same on every attempt of a delivery), `webhook-timestamp` (this
    attempt's unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256>`)."""
    stamp = int(now)
    signature = Signer(secret).sign(delivery_id, datetime.fromtimestamp(stamp, tz=UTC), body)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "Postboard-Webhooks/1",
    }
