"""Request and response shapes for posts."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate as v

from app.core.schemas import StrictSchema, Text, envelope_schema
from app.posts.models import BODY_MAX, STATUSES, TITLE_MAX, Post
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
    id = ma.fields.UUID(required=True)
    author_id = ma.fields.UUID(required=True)
    title = ma.fields.String(required=True)
    slug = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Permalink key for GET /api/posts/by-slug/{slug}: the title's words "
            "when the post was created, then its id; never changes. null only for a post "
            "written before slugs existed, until the backfill has reached it.",
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


def post_view(post: Post) -> dict[str, Any]:
    return {
        "id": post.public_id,
        "author_id": post.author.public_id,
        "title": post.title,
        "slug": post.slug,
        "body": post.body,
        "status": post.status,
        "published_at": post.published_at,
        "created_at": post.created_at,
        "updated_at": post.updated_at,
        "version": post.version,
    }
