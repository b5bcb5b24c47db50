"""Request and response shapes for webhooks and their deliveries."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate as v

from app.core.pagination import PageArgsSchema
from app.core.schemas import JsonBoolean, StrictSchema, Text, envelope_schema
from app.webhooks.models import (
    ALL_EVENTS,
    DELIVERY_STATUSES,
    DESCRIPTION_MAX,
    EVENT_TYPES,
    URL_MAX,
)

# More entries than anyone sends on purpose (there are 7 distinct values): refused before each
# entry is validated, so a huge list costs one length check.
EVENTS_MAX_ITEMS = 50
# Printable ASCII without spaces: a target is percent-encoded, its host in punycode.
URL_PATTERN = r"^[!-~]+$"


class EventTypes(ma.fields.List):
    """Known event types, or exactly ["*"]; never empty; duplicates dropped (first kept)."""

    def __init__(self, **kwargs: Any) -> None:
        choices = (*EVENT_TYPES, ALL_EVENTS)
        item = ma.fields.String(validate=v.OneOf(choices, error="Unknown event type {input!r}."))
        metadata = {
            "description": 'Event types to receive, or exactly ["*"] for all of them.',
            "minItems": 1,
            "maxItems": EVENTS_MAX_ITEMS,
            "example": ["post.created", "post.updated"],
            **kwargs.pop("metadata", {}),
        }
        super().__init__(item, metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if isinstance(value, list) and len(value) > EVENTS_MAX_ITEMS:
            raise ma.ValidationError(f"At most {EVENTS_MAX_ITEMS} event types.")
        types = list(dict.fromkeys(super()._deserialize(value, attr, data, **kwargs)))
        if not types:
            raise ma.ValidationError('Name at least one event type, or ["*"] for all.')
        if ALL_EVENTS in types and len(types) > 1:
            raise ma.ValidationError('"*" means every event type: send it alone.')
        return types


def _url(**kw: Any) -> Text:
    return Text(
        min_length=1,
        max_length=URL_MAX,
        validate=v.Regexp(URL_PATTERN, error="Must be printable ASCII without spaces."),
        metadata={
            "description": "An https:// URL that resolves to public addresses only.",
            "pattern": URL_PATTERN,
            "example": "https://hooks.example.com/postboard",
        },
        **kw,
    )


def _description(**kw: Any) -> Text:
    return Text(
        max_length=DESCRIPTION_MAX,
        allow_none=True,
        metadata={"example": "Publish to the team chat."},
        **kw,
    )


class WebhookCreateSchema(StrictSchema):
    url = _url(required=True)
    events = EventTypes(required=True)
    description = _description(load_default=None)


class WebhookPatchSchema(StrictSchema):
    url = _url()
    events = EventTypes()
    description = _description()
    active = JsonBoolean(metadata={"example": False})


class WebhookListArgsSchema(PageArgsSchema):
    """The pages of every list, and `?all=true` (admins)."""

    all = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "Admins only: every user's webhooks, not just your own."},
    )


class WebhookSchema(ma.Schema):
    """Documents app/webhooks/representation.py's output (responses are not dumped through it)."""

    id = ma.fields.UUID(required=True)
    url = ma.fields.String(required=True)
    events = ma.fields.List(ma.fields.String(), required=True)
    description = ma.fields.String(required=True, allow_none=True)
    active = ma.fields.Boolean(required=True)
    disabled_reason = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why an operator or the delivery side disabled it."},
    )
    created_at = ma.fields.AwareDateTime(required=True)
    updated_at = ma.fields.AwareDateTime(required=True)
    version = ma.fields.Integer(required=True)


class CreatedWebhookSchema(WebhookSchema):
    secret = ma.fields.String(
        required=True,
        metadata={
            "description": "The signing secret (Standard Webhooks, `whsec_<base64>`): shown in "
            "this answer only; keep it to verify `webhook-signature`.",
            "example": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        },
    )


class AttemptSchema(ma.Schema):
    attempt = ma.fields.Integer(
        required=True,
        metadata={
            "description": "1-based within the current attempt budget (a retry restarts it)."
        },
    )
    started_at = ma.fields.AwareDateTime(required=True)
    duration_ms = ma.fields.Integer(required=True)
    status_code = ma.fields.Integer(required=True, allow_none=True)
    error = ma.fields.String(required=True, allow_none=True)
    next_retry_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When the next attempt is due; null once delivered or dead."},
    )


class DeliverySchema(ma.Schema):
    id = ma.fields.UUID(
        required=True, metadata={"description": "The `webhook-id` header of every attempt."}
    )
    event_id = ma.fields.UUID(required=True)
    event_type = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=v.OneOf(DELIVERY_STATUSES))
    attempts = ma.fields.Integer(
        required=True, metadata={"description": "Attempts in the current budget."}
    )
    next_attempt_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    created_at = ma.fields.AwareDateTime(required=True)
    delivered_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    last_status_code = ma.fields.Integer(required=True, allow_none=True)
    last_error = ma.fields.String(required=True, allow_none=True)
    attempts_log = ma.fields.List(
        ma.fields.Nested(AttemptSchema),
        required=True,
        metadata={"description": "Every attempt, oldest first (kept across retries)."},
    )


WebhookEnvelopeSchema = envelope_schema("WebhookEnvelope", WebhookSchema)
CreatedWebhookEnvelopeSchema = envelope_schema("CreatedWebhookEnvelope", CreatedWebhookSchema)
WebhookListEnvelopeSchema = envelope_schema("WebhookListEnvelope", WebhookSchema, many=True)
DeliveryEnvelopeSchema = envelope_schema("DeliveryEnvelope", DeliverySchema)
DeliveryListEnvelopeSchema = envelope_schema("DeliveryListEnvelope", DeliverySchema, many=True)
