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


def post_from_state(public_id: str, version: int, state: dict[str, Any]) -> dict[str, Any]:
    """A post rebuilt from its events' folded state (app/core/history.py): the same fields,
    values and order as `public_post` of the row."""
    return {
        "id": public_id,
        "author_id": state["author_id"],
        "title": state["title"],
        "slug": state["slug"],
        "body": state["body"],
        "status": state["status"],
        "published_at": state["published_at"],
        "created_at": state["created_at"],
        "updated_at": state["updated_at"],
        "version": version,
    }
