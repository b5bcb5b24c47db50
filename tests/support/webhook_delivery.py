"""Webhook test helpers: subscriptions written straight to the database (the delivery side is
tested apart from the subscription API), the feed's events as the relay publishes them, what
was recorded of deliveries and attempts, and a local receiver (pytest-httpserver) on 127.0.0.1."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask
from pytest_httpserver import HTTPServer

from app.core.db import INCLUDE_DELETED, utcnow
from app.core.events import Event, event_json
from app.extensions import db
from app.users.models import User
from app.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery

# Short everything: the local receiver is plain http on loopback; retries come fast.
FAST_WEBHOOKS = {
    "WEBHOOKS_ALLOW_HTTP": True,
    "WEBHOOKS_ALLOW_PRIVATE": True,
    "WEBHOOKS_TIMEOUT_SECONDS": 0.5,
    "WEBHOOKS_BACKOFF_BASE_SECONDS": 0.05,
    "WEBHOOKS_BACKOFF_MAX_SECONDS": 0.2,
    "WEBHOOKS_BREAKER_RESET_SECONDS": 1.0,
}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def make_webhook(
    app: Flask,
    owner_id: str,
    url: str,
    *,
    events: tuple[str, ...] = ("*",),
    active: bool = True,
    deleted: bool = False,
) -> tuple[str, str]:
    """A subscription of user `owner_id` (public id); returns (its public id, its secret)."""
    secret = new_secret()
    with app.app_context():
        owner = db.session.scalar(
            sa.select(User.id)
            .where(User.public_id == uuid.UUID(owner_id))
            .execution_options(**{INCLUDE_DELETED: True})
        )
        webhook = Webhook(
            owner_id=owner,
            url=url,
            events=list(events),
            secret=secret,
            active=active,
            deleted_at=utcnow() if deleted else None,
        )
        db.session.add(webhook)
        db.session.commit()
        public_id = str(webhook.public_id)
        db.session.remove()
    return public_id, secret


def last_event_id(app: Flask) -> int:
    with app.app_context():
        found = db.session.scalar(sa.select(sa.func.coalesce(sa.func.max(Event.id), 0)))
        db.session.remove()
    return int(found or 0)


def feed_since(app: Flask, since: int) -> list[dict[str, Any]]:
    """The events after `since`, as the relay publishes them (`event_json`), in log order."""
    with app.app_context():
        rows = db.session.scalars(sa.select(Event).where(Event.id > since).order_by(Event.id))
        events = [event_json(row) for row in rows]
        db.session.remove()
    return events


def deliveries(app: Flask, webhook_id: str) -> list[dict[str, Any]]:
    """A webhook's deliveries in id order, each with its attempts."""
    with app.app_context():
        rows = db.session.scalars(
            sa.select(WebhookDelivery)
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(Webhook.public_id == uuid.UUID(webhook_id))
            .order_by(WebhookDelivery.id)
            .execution_options(**{INCLUDE_DELETED: True})
        ).all()
        found = []
        for row in rows:
            tried = db.session.scalars(
                sa.select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == row.id)
                .order_by(WebhookAttempt.id)
            ).all()
            found.append(
                {
                    "public_id": str(row.public_id),
                    "event_id": str(row.event_id),
                    "event_type": row.event_type,
                    "payload": row.payload,
                    "status": row.status,
                    "attempts": row.attempts,
                    "last_status_code": row.last_status_code,
                    "last_error": row.last_error,
                    "tried": [
                        {"attempt": a.attempt, "status_code": a.status_code, "error": a.error}
                        for a in tried
                    ],
                }
            )
        db.session.remove()
    return found


@contextmanager
def receiver() -> Iterator[HTTPServer]:
    """A threaded HTTP server on 127.0.0.1 (a free port): the webhook target."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()
