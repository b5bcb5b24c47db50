"""Every query on webhooks, their deliveries and attempts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db import INCLUDE_DELETED
from app.core.pagination import CursorCodec, Page, PageParams, paginate
from app.posts.models import Post
from app.users.models import User
from app.webhooks.models import DEAD, PENDING, Webhook, WebhookAttempt, WebhookDelivery


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, public_id: uuid.UUID) -> Webhook | None:
        """A live (not deleted) webhook."""
        return self.session.scalar(sa.select(Webhook).where(Webhook.public_id == public_id))

    def add(self, webhook: Webhook) -> Webhook:
        self.session.add(webhook)
        return webhook

    def lock_owner(self, owner_id: int) -> None:
        """Serialise an owner's creates (the per-user limit) on their user row; SQLite has one
        writer at a time anyway, and ignores FOR UPDATE."""
        self.session.execute(sa.select(User.id).where(User.id == owner_id).with_for_update())

    def count_live(self, owner_id: int) -> int:
        """The owner's webhooks that are not deleted (active or not)."""
        stmt = sa.select(sa.func.count(Webhook.id)).where(Webhook.owner_id == owner_id)
        return self.session.scalar(stmt) or 0

    def page(
        self, params: PageParams, codec: CursorCodec, *, owner_id: int | None
    ) -> Page[Webhook]:
        """Newest first: one owner's live webhooks, or everyone's (`owner_id=None`)."""
        stmt = sa.select(Webhook)
        if owner_id is not None:
            stmt = stmt.where(Webhook.owner_id == owner_id)
        return paginate(
            self.session,
            stmt,
            sort_columns=(Webhook.created_at, Webhook.id),
            params=params,
            codec=codec,
            scope=f"webhooks:{owner_id if owner_id is not None else '*'}",
        )

    def listed(self, *, owner_id: int | None, limit: int) -> list[tuple[Webhook, str]]:
        """Live webhooks with their owner's email, newest first (the CLI)."""
        stmt = sa.select(Webhook, User.email).join(User, User.id == Webhook.owner_id)
        if owner_id is not None:
            stmt = stmt.where(Webhook.owner_id == owner_id)
        stmt = stmt.order_by(Webhook.created_at.desc(), Webhook.id.desc()).limit(limit)
        # The owner may be deleted: their webhooks are still listed (and receive nothing).
        rows = self.session.execute(stmt.execution_options(**{INCLUDE_DELETED: True}))
        return [(webhook, email) for webhook, email in rows if webhook.deleted_at is None]

    def owner_of(self, aggregate_type: str, aggregate_id: uuid.UUID) -> int | None:
        """The user an aggregate belongs to (a user itself, a post's author), deleted or not."""
        if aggregate_type == "user":
            stmt = sa.select(User.id).where(User.public_id == aggregate_id)
        elif aggregate_type == "post":
            stmt = sa.select(Post.author_id).where(Post.public_id == aggregate_id)
        else:
            return None
        return self.session.scalar(stmt.execution_options(**{INCLUDE_DELETED: True}))

    def receiving(self, owner_id: int | None) -> list[Webhook]:
        """Live, active webhooks of live owners who receive an event of `owner_id`'s: that
        owner's and every admin's (event types are filtered by the caller)."""
        whose: sa.ColumnElement[bool] = User.is_admin.is_(True)
        if owner_id is not None:
            whose = sa.or_(whose, Webhook.owner_id == owner_id)
        stmt = (
            sa.select(Webhook)
            .join(User, User.id == Webhook.owner_id)
            .where(Webhook.active.is_(True), User.deleted_at.is_(None), whose)
            .order_by(Webhook.id)
        )
        return list(self.session.scalars(stmt))


class DeliveryRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, webhook_id: int, public_id: uuid.UUID) -> WebhookDelivery | None:
        return self.session.scalar(
            sa.select(WebhookDelivery).where(
                WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.public_id == public_id
            )
        )

    def add(self, delivery: WebhookDelivery) -> WebhookDelivery:
        self.session.add(delivery)
        return delivery

    def add_attempt(self, attempt: WebhookAttempt) -> WebhookAttempt:
        self.session.add(attempt)
        return attempt

    def page(
        self, webhook_id: int, params: PageParams, codec: CursorCodec
    ) -> Page[WebhookDelivery]:
        """A webhook's deliveries, newest first."""
        stmt = sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        return paginate(
            self.session,
            stmt,
            sort_columns=(WebhookDelivery.created_at, WebhookDelivery.id),
            params=params,
            codec=codec,
            scope=f"webhook-deliveries:{webhook_id}",
        )

    def attempts_of(self, delivery_ids: Iterable[int]) -> dict[int, list[WebhookAttempt]]:
        """Every attempt of these deliveries, oldest first, in one query."""
        ids = list(delivery_ids)
        found: dict[int, list[WebhookAttempt]] = {i: [] for i in ids}
        if not ids:
            return found
        stmt = (
            sa.select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(ids))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.id)
        )
        for attempt in self.session.scalars(stmt):
            found[attempt.delivery_id].append(attempt)
        return found

    def listed(
        self, webhook_id: int, *, status: str | None, limit: int
    ) -> Sequence[WebhookDelivery]:
        """A webhook's deliveries, newest first, optionally of one status (the CLI)."""
        stmt = sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        if status is not None:
            stmt = stmt.where(WebhookDelivery.status == status)
        stmt = stmt.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        return list(self.session.scalars(stmt.limit(limit)))

    def dead(self, webhook_id: int) -> list[WebhookDelivery]:
        """A webhook's dead-lettered deliveries, oldest first."""
        stmt = (
            sa.select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == DEAD)
            .order_by(WebhookDelivery.id)
        )
        return list(self.session.scalars(stmt))

    def revive(self, webhook_id: int, ids: Sequence[int] | None, now: datetime) -> int:
        """Make these dead deliveries of a webhook (None: all of its dead ones) pending, due
        `now`, with a fresh attempt budget; only rows still dead change (returns how many), so
        two concurrent retries revive a delivery once."""
        stmt = sa.update(WebhookDelivery).where(
            WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == DEAD
        )
        if ids is not None:
            stmt = stmt.where(WebhookDelivery.id.in_(ids))
        values = {"status": PENDING, "attempts": 0, "next_attempt_at": now, "delivered_at": None}
        result = self.session.execute(
            stmt.values(**values).execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
