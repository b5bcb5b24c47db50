"""HTTP layer for webhooks: /api/webhooks, /api/webhooks/{id}, its deliveries and retries."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, url_for
from flask.views import MethodView

from app.auth.guard import BEARER_AUTH, authenticated, require_principal
from app.core.api import ApiBlueprint, errors_doc, link, operation
from app.core.http import if_match, listing_json, page_params, single_json
from app.core.idempotency import idempotent
from app.core.pagination import PageArgsSchema
from app.core.security import WEBHOOKS_SCOPE
from app.webhooks.models import Webhook
from app.webhooks.representation import created_webhook, public_delivery, public_webhook
from app.webhooks.schemas import (
    CreatedWebhookEnvelopeSchema,
    DeliveryEnvelopeSchema,
    DeliveryListEnvelopeSchema,
    WebhookCreateSchema,
    WebhookEnvelopeSchema,
    WebhookListArgsSchema,
    WebhookListEnvelopeSchema,
    WebhookPatchSchema,
)
from app.webhooks.service import WebhookService

blp = ApiBlueprint(
    "webhooks",
    __name__,
    url_prefix="/api",
    description="Webhooks: signed event deliveries to your own HTTPS endpoints.",
)

WRITE_ERRORS = (400, 401, 403, 404, 412, 413, 415)
WEBHOOK_ID = "$response.body#/data/id"
WEBHOOK_LINKS = {
    "GetWebhook": link("getWebhook", webhook_id=WEBHOOK_ID),
    "PatchWebhook": link("patchWebhook", webhook_id=WEBHOOK_ID),
    "DeleteWebhook": link("deleteWebhook", webhook_id=WEBHOOK_ID),
    "ListWebhookDeliveries": link("listWebhookDeliveries", webhook_id=WEBHOOK_ID),
}
WEBHOOK_EXAMPLE = {
    "url": "https://hooks.example.com/postboard",
    "events": ["post.created", "post.updated"],
    "description": "Publish to the team chat.",
}
# The answer to a creation carries the secret: an ETag of its own representation.
CREATED_VARIANT = "created"


def service() -> WebhookService:
    return WebhookService.from_app()


def respond(webhook: Webhook) -> Any:
    return single_json(public_webhook(webhook), webhook.version)


@blp.route("/webhooks")
class WebhookCollection(MethodView):
    @blp.response(200, WebhookListEnvelopeSchema)
    @operation(blp, "listWebhooks", security=BEARER_AUTH)
    @errors_doc(blp, 400, 401, 403)
    @authenticated(scope=WEBHOOKS_SCOPE)
    @blp.arguments(WebhookListArgsSchema, location="query", as_kwargs=True)
    def get(self, all: bool = False, **args: Any) -> Any:
        """Your webhooks, newest first (offset or cursor pages); an admin's `?all=true` lists
        every user's."""
        page = service().page(page_params(args), viewer=require_principal(), everyone=all)
        return listing_json(page, [public_webhook(w) for w in page.items])

    @idempotent(blp)
    @blp.response(
        201, CreatedWebhookEnvelopeSchema, headers={"Location": {"schema": {"type": "string"}}}
    )
    @operation(blp, "createWebhook", security=BEARER_AUTH, links={201: WEBHOOK_LINKS})
    @errors_doc(blp, 400, 401, 409, 413, 415)
    @authenticated(scope=WEBHOOKS_SCOPE)
    @blp.arguments(WebhookCreateSchema, example=WEBHOOK_EXAMPLE)
    def post(self, data: dict[str, Any]) -> Any:
        """Subscribe a URL to event types; the answer shows the signing secret, once. 409 when
        you already have the most webhooks allowed (WEBHOOKS_PER_USER)."""
        webhook = service().create(data, actor=require_principal())
        location = url_for("webhooks.WebhookItem", webhook_id=webhook.public_id)
        return single_json(
            created_webhook(webhook),
            webhook.version,
            status=201,
            location=location,
            variant=CREATED_VARIANT,
        )


@blp.route("/webhooks/<uuid:webhook_id>")
class WebhookItem(MethodView):
    @blp.response(200, WebhookEnvelopeSchema)
    @operation(blp, "getWebhook", security=BEARER_AUTH, conditional="read")
    @errors_doc(blp, 401, 403, 404)
    @authenticated(scope=WEBHOOKS_SCOPE)
    def get(self, webhook_id: uuid.UUID) -> Any:
        """Get a webhook (its owner, admins); the secret is never shown again."""
        return respond(service().get(webhook_id, viewer=require_principal()))

    @blp.response(200, WebhookEnvelopeSchema)
    @operation(
        blp, "patchWebhook", security=BEARER_AUTH, links={200: WEBHOOK_LINKS}, conditional="write"
    )
    @errors_doc(blp, *WRITE_ERRORS)
    @authenticated(scope=WEBHOOKS_SCOPE)
    @blp.arguments(WebhookPatchSchema, example={"active": False})
    def patch(self, data: dict[str, Any], webhook_id: uuid.UUID) -> Any:
        """Change a webhook's url (checked again), events, description or active."""
        webhook = service().update(webhook_id, data, actor=require_principal(), if_match=if_match())
        return respond(webhook)

    @blp.response(204)
    @operation(blp, "deleteWebhook", security=BEARER_AUTH, conditional="write")
    @errors_doc(blp, 401, 403, 404, 412)
    @authenticated(scope=WEBHOOKS_SCOPE)
    def delete(self, webhook_id: uuid.UUID) -> Any:
        """Delete a webhook: no more deliveries, and 404 from now on."""
        service().delete(webhook_id, actor=require_principal(), if_match=if_match())
        return ""


@blp.route("/webhooks/<uuid:webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.response(200, DeliveryListEnvelopeSchema)
    @operation(blp, "listWebhookDeliveries", security=BEARER_AUTH)
    @errors_doc(blp, 400, 401, 403, 404)
    @authenticated(scope=WEBHOOKS_SCOPE)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, webhook_id: uuid.UUID, **args: Any) -> Any:
        """A webhook's deliveries, newest first, each with every attempt (status code,
        duration, error, next retry) (its owner, admins)."""
        found = service().delivery_page(webhook_id, page_params(args), viewer=require_principal())
        views = [public_delivery(d, found.attempts[d.id]) for d in found.page.items]
        return listing_json(found.page, views)


@blp.route("/webhooks/<uuid:webhook_id>/deliveries/<uuid:delivery_id>/retry")
class WebhookDeliveryRetry(MethodView):
    @blp.response(202, DeliveryEnvelopeSchema)
    @operation(blp, "retryWebhookDelivery", security=BEARER_AUTH)
    @errors_doc(blp, 401, 403, 404, 409)
    @authenticated(scope=WEBHOOKS_SCOPE)
    def post(self, webhook_id: uuid.UUID, delivery_id: uuid.UUID) -> Any:
        """Send a dead-lettered delivery again with a fresh attempt budget (its owner, admins);
        409 unless it is dead, or while the webhook is disabled."""
        webhooks = service()
        delivery = webhooks.retry(webhook_id, delivery_id, actor=require_principal())
        response = current_app.json.response(
            {"data": public_delivery(delivery, webhooks.attempts_of(delivery))}
        )
        response.status_code = 202
        return response
