"""The webhook tables: subscriptions (`webhooks`), one delivery per (webhook, event)
(`webhook_deliveries`) and every attempt of a delivery (`webhook_attempts`)."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, PublicEntityMixin, UTCDateTime, utcnow

# The event types a subscription may name (the history's types; tests/unit checks they match
# app/events/handlers.py), or exactly ["*"] for all of them.
EVENT_TYPES = (
    "user.created",
    "user.updated",
    "user.deleted",
    "post.created",
    "post.updated",
    "post.deleted",
)
ALL_EVENTS = "*"
URL_MAX = 2048
DESCRIPTION_MAX = 500
EVENT_TYPE_MAX = 64

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
DELIVERY_STATUSES = (PENDING, DELIVERED, DEAD)

_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class Webhook(PublicEntityMixin, Base):
    """A subscription: where to POST which events, signed with `secret`. DELETE soft-deletes it
    (the global filter hides it; it gets no deliveries); `version` gives the ETag."""

    __tablename__ = "webhooks"

    owner_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    url: Mapped[str] = mapped_column(sa.Text)
    # Event types, or ["*"] for every type.
    events: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    description: Mapped[str | None] = mapped_column(sa.Text, default=None)
    # The Standard Webhooks secret, `whsec_<base64>`: shown once at creation, never again.
    secret: Mapped[str] = mapped_column(sa.Text)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text, default=None)

    __table_args__ = (
        # GET /api/webhooks: an owner's live webhooks, newest first (keyset on created_at, id).
        sa.Index(
            "ix_webhooks_owner_created",
            "owner_id",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
    )

    def matches(self, event_type: str) -> bool:
        """Whether this webhook subscribes to `event_type` (ownership is checked elsewhere)."""
        return ALL_EVENTS in self.events or event_type in self.events

    def __repr__(self) -> str:
        return f"<Webhook {self.public_id} active={self.active}>"


class WebhookDelivery(Base):
    """One event for one webhook: the exact body every attempt sends, and where it stands.

    The big integer id gives the order per target (a drain sends a webhook's pending deliveries
    in id order); `public_id` is the `webhook-id` header of every attempt.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    public_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), unique=True, default=uuid.uuid4)
    webhook_id: Mapped[int] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid())
    event_type: Mapped[str] = mapped_column(sa.String(EVENT_TYPE_MAX))
    payload: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status_code: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status_valid"),
        # At most one delivery of an event to a webhook: the feed is at-least-once.
        sa.UniqueConstraint("webhook_id", "event_id"),
        # The drain: a webhook's next pending delivery, in order.
        sa.Index("ix_webhook_deliveries_webhook_status", "webhook_id", "status", "id"),
        # A sweep: pending deliveries now due, whatever their webhook.
        sa.Index("ix_webhook_deliveries_status_due", "status", "next_attempt_at"),
        # GET /api/webhooks/{id}/deliveries: newest first (keyset on created_at, id).
        sa.Index(
            "ix_webhook_deliveries_webhook_created",
            "webhook_id",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
        ),
    )

    def __repr__(self) -> str:
        return f"<WebhookDelivery {self.public_id} {self.status} attempts={self.attempts}>"


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery (kept when a dead delivery is retried)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    # 1-based, counted within the delivery's current attempt budget (a retry starts it again).
    attempt: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    duration_ms: Mapped[int] = mapped_column(sa.Integer, default=0)
    status_code: Mapped[int | None] = mapped_column(sa.Integer, default=None)
    error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    # When the next attempt is due; null when this one delivered or dead-lettered it.
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (
        # A delivery's log in order; also serves the foreign key.
        sa.Index("ix_webhook_attempts_delivery", "delivery_id", "id"),
    )

    def __repr__(self) -> str:
        return f"<WebhookAttempt {self.delivery_id}#{self.attempt} {self.status_code}>"
