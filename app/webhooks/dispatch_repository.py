"""The queries of the delivery side: who receives an event, recording deliveries (once per
webhook and event), a target's next delivery in order, its attempts, and the targets due."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.db import INCLUDE_DELETED
from app.core.events import Event
from app.posts.models import Post
from app.users.models import User
from app.webhooks.models import DEAD, DELIVERED, PENDING, Webhook, WebhookAttempt, WebhookDelivery


@dataclass(frozen=True)
class Subscriber:
    """A live, active webhook whose owner is live: what fan-out needs of it."""

    id: int
    public_id: uuid.UUID
    owner_id: int
    events: tuple[str, ...]
    owner_is_admin: bool
    created_at: datetime

    def wants(self, event_type: str, owner_id: int | None, occurred_at: datetime | None) -> bool:
        """An admin's webhook takes every event; a user's, those of their own aggregates; none
        takes an event from before it existed (a lagging feed must not replay the past)."""
        if "*" not in self.events and event_type not in self.events:
            return False
        if occurred_at is not None and occurred_at < self.created_at:
            return False
        return self.owner_is_admin or (owner_id is not None and owner_id == self.owner_id)


@dataclass(frozen=True)
class Head:
    """A target's next pending delivery, with where its event stands in its aggregate."""

    id: int
    public_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    payload: str
    attempts: int
    next_attempt_at: datetime | None
    aggregate_type: str | None
    aggregate_id: uuid.UUID | None
    version: int | None


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def owners(session: Session, events: Iterable[Mapping[str, Any]]) -> dict[uuid.UUID, int]:
    """Aggregate public id -> the owning user's key: a user owns itself, a post its author
    (deleted users and posts included: their last events are delivered too)."""
    users = {_uuid(e["aggregate"]["id"]) for e in events if e["aggregate"]["type"] == "user"}
    posts = {_uuid(e["aggregate"]["id"]) for e in events if e["aggregate"]["type"] == "post"}
    found: dict[uuid.UUID, int] = {}
    if users:
        query = sa.select(User.public_id, User.id).where(User.public_id.in_(users))
        rows = session.execute(query.execution_options(**{INCLUDE_DELETED: True}))
        found.update((row[0], row[1]) for row in rows)
    if posts:
        query = sa.select(Post.public_id, Post.author_id).where(Post.public_id.in_(posts))
        rows = session.execute(query.execution_options(**{INCLUDE_DELETED: True}))
        found.update((row[0], row[1]) for row in rows)
    return found


def subscribers(session: Session, owner_ids: Iterable[int]) -> list[Subscriber]:
    """Live, active webhooks of live owners that may receive events of `owner_ids`: theirs,
    and every admin's."""
    ids = sorted(set(owner_ids))
    mine = Webhook.owner_id.in_(ids) if ids else sa.false()
    rows = session.execute(
        sa.select(
            Webhook.id,
            Webhook.public_id,
            Webhook.owner_id,
            Webhook.events,
            User.is_admin,
            Webhook.created_at,
        )
        .join(User, User.id == Webhook.owner_id)
        .where(Webhook.active.is_(True), sa.or_(mine, User.is_admin.is_(True)))
    )
    return [
        Subscriber(
            row.id,
            row.public_id,
            row.owner_id,
            tuple(row.events or ()),
            row.is_admin,
            row.created_at,
        )
        for row in rows
    ]


def insert_deliveries(session: Session, rows: Sequence[Mapping[str, Any]]) -> set[int]:
    """Insert the rows, skipping any (webhook, event) already there; the webhooks that got one."""
    if not rows:
        return set()
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(WebhookDelivery)
        .on_conflict_do_nothing(index_elements=["webhook_id", "event_id"])
        .returning(WebhookDelivery.webhook_id)
    )
    return set(session.scalars(statement, list(rows)))


def webhook_for_drain(session: Session, public_id: uuid.UUID) -> Webhook | None:
    """The live, active webhook to drain (None: deleted, disabled or unknown: nothing to send)."""
    webhook = session.scalar(sa.select(Webhook).where(Webhook.public_id == public_id))
    return webhook if webhook is not None and webhook.active else None


_HEAD_COLUMNS = (
    WebhookDelivery.id,
    WebhookDelivery.public_id,
    WebhookDelivery.event_id,
    WebhookDelivery.event_type,
    WebhookDelivery.payload,
    WebhookDelivery.attempts,
    WebhookDelivery.next_attempt_at,
    Event.aggregate_type,
    Event.aggregate_id,
    Event.aggregate_version,
)


def pending_page(session: Session, webhook_id: int, *, limit: int) -> list[Head]:
    """The target's first `limit` pending deliveries in event-log order (commit order per
    aggregate), due or not: the first is the head of the line."""
    rows = session.execute(
        sa.select(*_HEAD_COLUMNS)
        .outerjoin(Event, Event.event_id == WebhookDelivery.event_id)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == PENDING)
        .order_by(sa.func.coalesce(Event.id, 0), WebhookDelivery.id)
        .limit(limit)
    )
    return [
        Head(
            id=row.id,
            public_id=row.public_id,
            event_id=row.event_id,
            event_type=row.event_type,
            payload=row.payload,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            aggregate_type=row.aggregate_type,
            aggregate_id=row.aggregate_id,
            version=row.aggregate_version,
        )
        for row in rows
    ]


def next_pending(session: Session, webhook_id: int) -> Head | None:
    """The target's head of line (None: nothing pending)."""
    page = pending_page(session, webhook_id, limit=1)
    return page[0] if page else None


def unrecorded_predecessor(
    session: Session,
    webhook_id: int,
    *,
    created_at: datetime,
    events: tuple[str, ...],
    head: Head,
    since: datetime,
) -> uuid.UUID | None:
    """The id of the event just before `head`'s in its aggregate if this webhook takes its
    type, it happened after `since` and after the webhook was made, and it has no delivery for
    this webhook; else None."""
    if head.aggregate_id is None or head.version is None or head.version <= 1:
        return None
    previous = session.execute(
        sa.select(Event.event_id, Event.event_type, Event.occurred_at, WebhookDelivery.id)
        .outerjoin(
            WebhookDelivery,
            sa.and_(
                WebhookDelivery.event_id == Event.event_id,
                WebhookDelivery.webhook_id == webhook_id,
            ),
        )
        .where(
            Event.aggregate_type == head.aggregate_type,
            Event.aggregate_id == head.aggregate_id,
            Event.aggregate_version == head.version - 1,
        )
    ).first()
    if previous is None or previous.id is not None:
        return None  # none, or recorded
    if previous.occurred_at < max(since, created_at):
        return None
    if "*" not in events and previous.event_type not in events:
        return None
    return _uuid(previous.event_id)


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: int
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    status: str  # the delivery's status after it
    next_attempt_at: datetime | None
    finished_at: datetime


def record_attempt(session: Session, record: AttemptRecord) -> None:
    """The attempt's row and the delivery's new state (only while it is still pending); Core
    statements on the tables: nothing for the ORM to track or flush."""
    attempts: Any = WebhookAttempt.__table__
    deliveries: Any = WebhookDelivery.__table__
    session.execute(
        attempts.insert().values(
            delivery_id=record.delivery_id,
            attempt=record.attempt,
            started_at=record.started_at,
            duration_ms=record.duration_ms,
            status_code=record.status_code,
            error=record.error,
            next_retry_at=record.next_attempt_at,
        )
    )
    session.execute(
        sa.update(deliveries)
        .where(deliveries.c.id == record.delivery_id, deliveries.c.status == PENDING)
        .values(
            status=record.status,
            attempts=record.attempt,
            next_attempt_at=record.next_attempt_at,
            last_status_code=record.status_code,
            last_error=record.error,
            delivered_at=record.finished_at if record.status == DELIVERED else None,
        )
    )


def _waiting(now: datetime) -> Any:
    """A pending delivery of the same webhook in its backoff: only a head is ever attempted, so
    that is the head of the line, and nothing of that webhook is due before it."""
    waiting = sa.alias(WebhookDelivery.__table__, "waiting")
    return sa.exists().where(
        waiting.c.webhook_id == Webhook.id,
        waiting.c.status == PENDING,
        waiting.c.next_attempt_at > now,
    )


def _due(now: datetime) -> Any:
    return sa.and_(
        WebhookDelivery.status == PENDING,
        sa.or_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.next_attempt_at <= now),
    )


def has_due(session: Session, public_id: uuid.UUID, now: datetime) -> bool:
    """Whether the live, active webhook has a delivery due now and no head in its backoff."""
    found = session.scalar(
        sa.select(WebhookDelivery.id)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(
            Webhook.public_id == public_id,
            Webhook.active.is_(True),
            _due(now),
            ~_waiting(now),
        )
        .limit(1)
    )
    return found is not None


def due_webhooks(session: Session, now: datetime, *, limit: int = 1000) -> list[uuid.UUID]:
    """Live, active webhooks of live owners with a delivery due now and no head in its backoff
    (the sweep's list)."""
    due = sa.select(WebhookDelivery.webhook_id).where(_due(now)).distinct().subquery()
    query = (
        sa.select(Webhook.public_id)
        .join(due, due.c.webhook_id == Webhook.id)
        .join(User, User.id == Webhook.owner_id)
        .where(Webhook.active.is_(True), ~_waiting(now))
        .limit(limit)
    )
    return list(session.scalars(query))


__all__ = ["DEAD", "DELIVERED", "PENDING"]
