"""Request and response shapes for posts."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate as v

from app.core.schemas import StrictSchema, Text, envelope_schema
from app.posts.models import BODY_MAX, STATUSES, TITLE_MAX
from app.posts.slugs import SLUG_MAX, SLUG_MIN, SLUG_REGEX


def _title(**kw: Any) -> Text:
    return Text(min_length=1, max_length=TITLE_MAX, metadata={"example": "Hello"}, **kw)


def _body(**kw: Any) -> Text:
    return Text(
        multiline=True,
        strip=False,
        max_length=BODY_MAX,
        metadata={"example": "First post."},
        **kw,
    )


def _status(**kw: Any) -> ma.fields.String:
    return ma.fields.String(validate=v.OneOf(STATUSES), metadata={"example": "published"}, **kw)


class PostCreateSchema(StrictSchema):
    title = _title(required=True)
    body = _body(load_default="")
    status = _status(load_default="draft")


class PostPutSchema(StrictSchema):
    title = _title(required=True)
    body = _body(required=True)
    status = _status(required=True)


class PostPatchSchema(StrictSchema):
    title = _title()
    body = _body()
    status = _status()


class PostSchema(ma.Schema):
    """Documents app/posts/representation.py's output (responses are not dumped through it)."""

    id = ma.fields.UUID(required=True)
    author_id = ma.fields.UUID(required=True)
    title = ma.fields.String(required=True)
    slug = ma.fields.String(
        required=True,
        metadata={
            "description": "Permalink key for GET /api/posts/by-slug/{slug}: the title's words "
            "when the post was created, then its id; never changes.",
            "pattern": f"^{SLUG_REGEX}$",
            "minLength": SLUG_MIN,
            "maxLength": SLUG_MAX,
            "example": "hello-world-b45jy3snfnhivgy4lv7c7ctlhq",
        },
    )
    body = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=v.OneOf(STATUSES))
    published_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    created_at = ma.fields.AwareDateTime(required=True)
    updated_at = ma.fields.AwareDateTime(required=True)
    version = ma.fields.Integer(required=True)


PostEnvelopeSchema = envelope_schema("PostEnvelope", PostSchema)
PostListEnvelopeSchema = envelope_schema("PostListEnvelope", PostSchema, many=True)
