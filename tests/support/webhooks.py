"""Webhook test data: a subscription made through the API, and deliveries with their attempts
written through the repository, as the delivery side writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask

from app.extensions import db
from app.webhooks.models import DEAD, DELIVERED, PENDING, WebhookAttempt, WebhookDelivery
from app.webhooks.repository import DeliveryRepository, WebhookRepository

# Public addresses as literals: checked like any name, with no DNS lookup in the tests.
PUBLIC_URL = "https://93.184.216.34/hooks"
PUBLIC_V6_URL = "https://[2606:2800:220:1:248:1893:25c8:1946]:8443/in?x=1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # when test deliveries were made
WEBHOOK_FIELDS = {
    "id",
    "url",
    "events",
    "description",
    "active",
    "disabled_reason",
    "created_at",
    "updated_at",
    "version",
}


def create(client, account, body: dict[str, Any] | None = None, **kwargs: Any):
    body = {"url": PUBLIC_URL, "events": ["post.created"]} if body is None else body
    return client.post("/api/webhooks", json=body, headers=account.headers, **kwargs)


def created(client, account, **fields: Any) -> dict[str, Any]:
    response = create(client, account, {"url": PUBLIC_URL, "events": ["*"], **fields})
    assert response.status_code == 201, response.json
    return response.json["data"]


def item(webhook_id: str) -> str:
    return f"/api/webhooks/{webhook_id}"


def detail_fields(error: dict[str, Any]) -> set[str]:
    return {d["field"] for d in error.get("details", [])}


def new_webhook(client, account, events: list[str] | None = None) -> str:
    response = client.post(
        "/api/webhooks",
        json={"url": PUBLIC_URL, "events": events or ["*"]},
        headers=account.headers,
    )
    assert response.status_code == 201, response.json
    return str(response.json["data"]["id"])


def add_delivery(
    app: Flask,
    webhook_id: str,
    *,
    status: str = DEAD,
    codes: tuple[int | None, ...] = (500, 500),
    created_at: datetime = T0,
    event_type: str = "post.created",
) -> str:
    """A delivery with one attempt per status code (None: a timeout), as the drain records them."""
    with app.app_context():
        webhook = WebhookRepository(db.session).get(uuid.UUID(webhook_id))
        assert webhook is not None
        deliveries = DeliveryRepository(db.session)
        delivery = deliveries.add(
            WebhookDelivery(
                webhook_id=webhook.id,
                event_id=uuid.uuid4(),
                event_type=event_type,
                payload='{"type":"post.created","timestamp":"2026-12-01T12:00:00+00:00","data":{}}',
                status=status,
                attempts=len(codes),
                next_attempt_at=created_at + timedelta(minutes=5) if status == PENDING else None,
                last_status_code=codes[-1] if codes else None,
                last_error="HTTP 500" if status == DEAD else None,
                created_at=created_at,
                delivered_at=created_at + timedelta(seconds=1) if status == DELIVERED else None,
            )
        )
        db.session.flush()
        for n, code in enumerate(codes, start=1):
            last = n == len(codes)
            deliveries.add_attempt(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempt=n,
                    started_at=created_at + timedelta(seconds=n),
                    duration_ms=10 * n,
                    status_code=code,
                    error=None
                    if code and code < 300
                    else ("timeout" if code is None else f"HTTP {code}"),
                    next_retry_at=None
                    if last and status != PENDING
                    else created_at + timedelta(minutes=n),
                )
            )
        db.session.commit()
        public_id = str(delivery.public_id)
        db.session.remove()
    return public_id
