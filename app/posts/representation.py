"""The post's one JSON representation: what the cache holds and every response serves (the
marshmallow PostSchema only documents it)."""

from __future__ import annotations

from typing import Any

from app.posts.models import Post


def public_post(post: Post) -> dict[str, Any]:
    """Every field, JSON-ready, in the documented order."""
    return {
        "id": str(post.public_id),
        "author_id": str(post.author.public_id),
        "title": post.title,
        "slug": post.slug,
        "body": post.body,
        "status": post.status,
        "published_at": post.published_at.isoformat() if post.published_at else None,
        "created_at": post.created_at.isoformat(),
        "updated_at": post.updated_at.isoformat(),
        "version": post.version,
    }
