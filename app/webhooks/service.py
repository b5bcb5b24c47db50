"""Business rules for webhooks: who owns and sees a subscription, target checks, the per-user
limit, who receives which event, and re-sending dead deliveries.

Webhook writes are configuration, not history: they record no event (and so never feed
webhooks themselves). A retry publishes `webhooks.drain` once its transaction has committed.
"""

from __future__ import annotations

import base64
import secrets
import socket
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from app.core.conditional import check_version
from app.core.db import utcnow
from app.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.core.http import cursor_codec
from app.core.pagination import CursorCodec, Page, PageParams
from app.core.publishing import enqueue
from app.core.security import Principal
from app.core.ssrf import Resolver, UnsafeTarget, check_target
from app.core.uow import UnitOfWork
from app.extensions import db
from app.users.repository import UserRepository
from app.webhooks.breakers import forget_quietly
from app.webhooks.models import DEAD, Webhook, WebhookAttempt, WebhookDelivery
from app.webhooks.policy import WebhookPolicy
from app.webhooks.repository import DeliveryRepository, WebhookRepository

DRAIN_TASK = "webhooks.drain"  # args: [webhook public id as str]; run by the worker
SECRET_PREFIX = "whsec_"  # noqa: S105  # nosec B105 - the format's prefix, not a secret
SECRET_BYTES = 24
MUTABLE_FIELDS = ("url", "events", "description", "active")


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and the base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


@dataclass(frozen=True)
class DeliveryPage:
    """A page of deliveries and each one's attempts (oldest first), loaded in one query."""

    page: Page[WebhookDelivery]
    attempts: Mapping[int, Sequence[WebhookAttempt]]


class WebhookService:
    def __init__(
        self,
        session: Session,
        *,
        codec: CursorCodec,
        policy: WebhookPolicy,
        resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self.session = session
        self.webhooks = WebhookRepository(session)
        self.deliveries = DeliveryRepository(session)
        self.users = UserRepository(session)
        self.codec = codec
        self.policy = policy
        self.resolve = resolve

    @classmethod
    def from_app(cls) -> WebhookService:
        """The service on this app context's session, cursor codec and settings (routes, tasks
        and the CLI all build it here)."""
        return cls(
            db.session(), codec=cursor_codec(), policy=WebhookPolicy.from_config(current_app.config)
        )

    # Subscriptions -------------------------------------------------------------------------

    def check_url(self, url: str) -> None:
        """400 on field `url` when the target is not one deliveries may reach (and why)."""
        try:
            check_target(
                url,
                allow_http=self.policy.allow_http,
                allow_private=self.policy.allow_private,
                resolve=self.resolve,
            )
        except UnsafeTarget as unsafe:
            message = f"The URL {unsafe.reason}."
            raise ValidationFailed(
                "The webhook URL is not allowed.", details=[{"field": "url", "message": message}]
            ) from None

    def create(self, data: Mapping[str, Any], *, actor: Principal) -> Webhook:
        """A new subscription of the actor's; its `secret` is for the creation's answer only."""
        self.check_url(data["url"])
        now = utcnow()
        webhook = Webhook(
            owner_id=actor.user_id,
            url=data["url"],
            events=list(data["events"]),
            description=data.get("description"),
            secret=new_secret(),
            active=True,
            created_at=now,
            updated_at=now,
            version=1,
        )
        with UnitOfWork(self.session, actor_id=actor.public_id):
            self.webhooks.lock_owner(actor.user_id)
            if self.webhooks.count_live(actor.user_id) >= self.policy.per_user:
                raise Conflict(
                    f"You already have {self.policy.per_user} webhooks, the most allowed; "
                    "delete one first."
                )
            self.webhooks.add(webhook)
        return webhook

    def page(
        self, params: PageParams, *, viewer: Principal, everyone: bool = False
    ) -> Page[Webhook]:
        """The viewer's own webhooks, newest first; every user's with `everyone` (admins)."""
        if everyone and not viewer.is_admin:
            raise Forbidden("Only admins may list every user's webhooks.")
        owner = None if everyone else viewer.user_id
        return self.webhooks.page(params, self.codec, owner_id=owner)

    def get(self, public_id: uuid.UUID, *, viewer: Principal) -> Webhook:
        """A live webhook of the viewer's (any, for an admin); someone else's is 403."""
        webhook = self.webhooks.get(public_id)
        if webhook is None:
            raise NotFound("No such webhook.")
        if not viewer.may_act_for(webhook.owner_id):
            raise Forbidden("Only its owner and admins may see or change a webhook.")
        return webhook

    def update(
        self,
        public_id: uuid.UUID,
        changes: Mapping[str, Any],
        *,
        actor: Principal,
        if_match: Collection[int] | None = None,
    ) -> Webhook:
        """Change url (checked again), events, description or active. Activating clears a
        disabled reason and wakes the drain for what waited."""
        webhook = self.get(public_id, viewer=actor)
        check_version(webhook.version, if_match)
        values = {k: v for k, v in changes.items() if k in MUTABLE_FIELDS}
        values = {k: v for k, v in values.items() if getattr(webhook, k) != v}
        if not values:
            return webhook
        if "url" in values:
            self.check_url(values["url"])
        activated = values.get("active") is True
        with UnitOfWork(self.session, actor_id=actor.public_id):
            for key, value in values.items():
                setattr(webhook, key, list(value) if key == "events" else value)
            if activated:
                webhook.disabled_reason = None
            webhook.updated_at = utcnow()
            webhook.version += 1
        if activated:
            self.wake(webhook)
        return webhook

    def delete(
        self, public_id: uuid.UUID, *, actor: Principal, if_match: Collection[int] | None = None
    ) -> None:
        """Soft delete: the webhook is 404 from now on and gets no deliveries."""
        webhook = self.get(public_id, viewer=actor)
        check_version(webhook.version, if_match)
        now = utcnow()
        with UnitOfWork(self.session, actor_id=actor.public_id):
            webhook.deleted_at = now
            webhook.updated_at = now
            webhook.active = False
            webhook.version += 1
        forget_quietly(str(webhook.public_id))  # its breaker state goes with it

    # Deliveries ----------------------------------------------------------------------------

    def delivery_page(
        self, public_id: uuid.UUID, params: PageParams, *, viewer: Principal
    ) -> DeliveryPage:
        """A webhook's deliveries, newest first, each with its attempts (two queries a page)."""
        webhook = self.get(public_id, viewer=viewer)
        page = self.deliveries.page(webhook.id, params, self.codec)
        return DeliveryPage(page, self.deliveries.attempts_of(d.id for d in page.items))

    def attempts_of(self, delivery: WebhookDelivery) -> list[WebhookAttempt]:
        return self.deliveries.attempts_of([delivery.id])[delivery.id]

    def retry(
        self, public_id: uuid.UUID, delivery_id: uuid.UUID, *, actor: Principal
    ) -> WebhookDelivery:
        """Send a dead-lettered delivery again: pending, due now, a fresh attempt budget (its
        attempt log kept); the drain is published after the commit."""
        webhook = self.get(public_id, viewer=actor)
        delivery = self.deliveries.get(webhook.id, delivery_id)
        if delivery is None:
            raise NotFound("No such delivery.")
        self._retry(webhook, [delivery], actor_id=actor.public_id)
        self.session.refresh(delivery)  # changed by an UPDATE statement, not through the object
        return delivery

    def _retry(
        self,
        webhook: Webhook,
        deliveries: Sequence[WebhookDelivery] | None,
        *,
        actor_id: uuid.UUID | None,
    ) -> tuple[int, bool]:
        """Revive these dead deliveries (None: every dead one of the webhook); returns how many
        and whether the drain was published (False: none, tasks off or broker down; a sweep
        then finds them due)."""
        if not webhook.active:
            raise Conflict("The webhook is disabled: activate it before retrying deliveries.")
        for delivery in deliveries or ():
            if delivery.status != DEAD:
                raise Conflict(
                    f"Only a dead delivery can be retried; this one is {delivery.status}."
                )
        ids = None if deliveries is None else [d.id for d in deliveries]
        with UnitOfWork(self.session, actor_id=actor_id):
            revived = self.deliveries.revive(webhook.id, ids, utcnow())
            if ids is not None and revived != len(ids):  # a concurrent retry took it first
                raise Conflict("The delivery was retried by another request meanwhile.")
        return revived, self.wake(webhook) if revived else False

    def wake(self, webhook: Webhook) -> bool:
        """Publish the drain of this webhook's pending deliveries (after a commit)."""
        return enqueue(DRAIN_TASK, str(webhook.public_id), queue=self.policy.queue)

    # Operators (the CLI) -------------------------------------------------------------------

    def listed(
        self, *, owner_email: str | None = None, limit: int = 1000
    ) -> list[tuple[Webhook, str]]:
        """Live webhooks with their owner's email, newest first; one owner's by email."""
        owner_id = None
        if owner_email is not None:
            owner = self.users.get_by_email(owner_email)
            if owner is None:
                raise NotFound(f"No user with the email {owner_email}.")
            owner_id = owner.id
        return self.webhooks.listed(owner_id=owner_id, limit=limit)

    def find(self, public_id: uuid.UUID) -> Webhook:
        """A live webhook, whoever owns it (operators)."""
        webhook = self.webhooks.get(public_id)
        if webhook is None:
            raise NotFound("No such webhook.")
        return webhook

    def deliveries_of(
        self, public_id: uuid.UUID, *, status: str | None = None, limit: int = 50
    ) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
        """A webhook's newest deliveries (of one status), each with its attempts."""
        webhook = self.find(public_id)
        found = self.deliveries.listed(webhook.id, status=status, limit=limit)
        attempts = self.deliveries.attempts_of(d.id for d in found)
        return [(d, attempts[d.id]) for d in found]

    def retry_as_operator(
        self, public_id: uuid.UUID, delivery_id: uuid.UUID | None = None
    ) -> tuple[int, bool]:
        """Retry one dead delivery, or every dead one (`delivery_id=None`); returns how many
        and whether the drain was published."""
        webhook = self.find(public_id)
        if delivery_id is None:
            return self._retry(webhook, None, actor_id=None)
        delivery = self.deliveries.get(webhook.id, delivery_id)
        if delivery is None:
            raise NotFound("No such delivery.")
        return self._retry(webhook, [delivery], actor_id=None)

    def disable(self, public_id: uuid.UUID, *, reason: str | None = None) -> Webhook:
        """Stop a webhook's deliveries (active=false) with the reason its owner will see; also
        what the delivery side may call for a target that keeps failing."""
        webhook = self.find(public_id)
        with UnitOfWork(self.session):
            webhook.active = False
            webhook.disabled_reason = reason
            webhook.updated_at = utcnow()
            webhook.version += 1
        return webhook

    # Fan-out (the feed consumer) -----------------------------------------------------------

    def recipients(self, event: Mapping[str, Any]) -> list[Webhook]:
        """The webhooks that receive a feed event (its JSON: `type`, `aggregate`): live, active
        ones subscribed to its type, of the user the event is about (a user's own events and
        their posts') and of every admin. Owners deleted by now receive nothing."""
        aggregate = event.get("aggregate") or {}
        try:
            aggregate_id = uuid.UUID(str(aggregate.get("id")))
        except ValueError:
            return []
        owner_id = self.webhooks.owner_of(str(aggregate.get("type")), aggregate_id)
        event_type = str(event.get("type"))
        return [w for w in self.webhooks.receiving(owner_id) if w.matches(event_type)]
