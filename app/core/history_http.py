"""The HTTP side of history that users and posts share: the event and `as_of` schemas (they
document what `event_json` and the query take), reading `as_of`, and the audit trail's page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import marshmallow as ma

from app.core.errors import Unauthenticated, ValidationFailed
from app.core.events import REDACTED, Event, event_json
from app.core.history import parse_instant
from app.core.http import conditional_listing_json
from app.core.pagination import Page
from app.core.schemas import PageMetaSchema
from app.core.security import Principal

AS_OF_MAX_LENGTH = 64
AS_OF_EXAMPLE = "2026-11-21T04:12:00Z"


class AggregateRefSchema(ma.Schema):
    type = ma.fields.String(required=True, metadata={"example": "post"})
    id = ma.fields.UUID(required=True)


class EventSchema(ma.Schema):
    """One event of an audit trail (contract §8)."""

    id = ma.fields.UUID(required=True, metadata={"description": "The event's own id."})
    type = ma.fields.String(required=True, metadata={"example": "post.updated"})
    aggregate = ma.fields.Nested(AggregateRefSchema, required=True)
    actor_id = ma.fields.UUID(
        required=True,
        allow_none=True,
        metadata={"description": "The user who made the change; null for the system."},
    )
    occurred_at = ma.fields.String(
        required=True, metadata={"format": "date-time", "description": "The write's time."}
    )
    version = ma.fields.Integer(
        required=True, metadata={"description": "The resource's version after this write."}
    )
    changes = ma.fields.Dict(
        keys=ma.fields.String(),
        required=True,
        metadata={
            "description": "Field -> new value, for every field the write changed. A secret "
            f"(a password) shows only that it changed: {REDACTED!r}.",
            "example": {"title": "Hello again", "updated_at": "2026-11-21T04:12:00+00:00"},
        },
    )
    request_id = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The server's id of the request that made the change."},
    )


EventListEnvelopeSchema = ma.Schema.from_dict(
    {
        "data": ma.fields.List(ma.fields.Nested(EventSchema), required=True),
        "meta": ma.fields.Nested(PageMetaSchema, required=True),
    },
    name="EventListEnvelope",
)


class AsOfArgsSchema(ma.Schema):
    """`?as_of=`: read the resource as it was at that instant (owner and admins)."""

    class Meta:
        unknown = ma.EXCLUDE

    # Read by `requested_instant` in the view, after authentication: a 401 comes before a 400.
    as_of = ma.fields.String(
        metadata={
            "format": "date-time",
            "maxLength": AS_OF_MAX_LENGTH,
            "description": "The resource as it was at this instant, rebuilt from its events "
            "(the owner and admins only): ISO 8601 with a time and a UTC offset "
            "(`Z` or `+hh:mm`); without an offset it is 400.",
            "example": AS_OF_EXAMPLE,
        }
    )


def requested_instant(as_of: str, viewer: Principal | None) -> tuple[datetime, Principal]:
    """The instant asked for and who asks: 401 for an anonymous caller (history is the owner's
    and admins'), then 400 for a malformed timestamp."""
    if viewer is None:
        raise Unauthenticated("Reading history needs authentication: send Authorization: Bearer.")
    try:
        if len(as_of) > AS_OF_MAX_LENGTH:
            raise ValueError(f"At most {AS_OF_MAX_LENGTH} characters.")
        return parse_instant(as_of), viewer
    except ValueError as exc:
        raise ValidationFailed(
            "The as_of timestamp is not valid.", details=[{"field": "as_of", "message": str(exc)}]
        ) from None


def trail_json(page: Page[Event]) -> Any:
    """A page of an audit trail: the list envelope with a weak ETag (304 on If-None-Match)."""
    return conditional_listing_json(
        page, [event_json(event) for event in page.items], [event.id for event in page.items]
    )
