"""Fan-out: the webhooks' consumer of the event feed (app/events/feed.py `FEED_HANDLERS`).

For each batch it records one delivery per (matching webhook, event), in the batch's order, in
one transaction, skipping any already recorded (the feed is at least once: a redelivered batch
inserts nothing twice), then asks for a drain of each webhook that got something new. Who gets
what: a user's webhook the events of their own user and of their posts (deleted ones too); an
admin's webhook every event; each filtered by its event types; inactive or deleted webhooks,
and those of deleted owners, nothing; no webhook gets an event from before it was created.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from app.core.db import utcnow
from app.core.publishing import enqueue
from app.extensions import db
from app.webhooks import dispatch_repository as repo
from app.webhooks import signing
from app.webhooks.drain_lease import drain_running
from app.webhooks.models import PENDING

DRAIN_TASK = "webhooks.drain"  # routed to WEBHOOKS_QUEUE (app/core/tasks.py)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def fan_out(events: Sequence[Mapping[str, Any]]) -> int:
    """Record the deliveries of `events` (a feed batch, in order); returns how many it offered
    (those already recorded are skipped by the insert)."""
    events = [e for e in events if _uuid(e.get("id")) is not None and e.get("type")]
    if not events:
        return 0
    session = db.session()
    try:
        owner_of = repo.owners(session, [e for e in events if isinstance(e.get("aggregate"), dict)])
        subscribers = repo.subscribers(session, owner_of.values())
        rows: list[dict[str, Any]] = []
        now = utcnow()
        for event in events:
            aggregate = _uuid((event.get("aggregate") or {}).get("id"))
            owner = owner_of.get(aggregate) if aggregate is not None else None
            occurred = _instant(event.get("occurred_at"))
            body: str | None = None
            for subscriber in subscribers:
                if not subscriber.wants(str(event["type"]), owner, occurred):
                    continue
                body = body or signing.payload(event)
                rows.append(
                    {
                        "public_id": uuid.uuid4(),
                        "webhook_id": subscriber.id,
                        "event_id": _uuid(event["id"]),
                        "event_type": str(event["type"]),
                        "payload": body,
                        "status": PENDING,
                        "attempts": 0,
                        "created_at": now,
                    }
                )
        touched = repo.insert_deliveries(session, rows)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    for subscriber in subscribers:
        # A running drain takes the new rows too (it looks again after letting go of its
        # lease, and these are committed): one message less per busy target and batch.
        if subscriber.id in touched and not drain_running(subscriber.public_id):
            enqueue(DRAIN_TASK, str(subscriber.public_id))
    return len(rows)
