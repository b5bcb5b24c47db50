"""How posts are cached: the key kinds, what an entry holds, the fills, the after-commit effects
(tombstones, write-through tasks, the authors' count generations) and the warmer. The mechanism
(versioned entries, generations) is app/core/cache.py's."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask

from app.core.cache import Cache, app_cache
from app.core.cache_warming import fill_in_batches, register_warmer
from app.core.events import DomainEvent
from app.core.publishing import enqueue
from app.posts.models import Post
from app.posts.repository import PostRepository
from app.posts.representation import public_post

POST_KIND = "post"  # postboard:cache:<schema>:post:<public id>
# A user's post counts (`meta.total` of /api/users/{id}/posts), cached under a per-user
# generation that every write changing them bumps (app/core/cache.py).
USER_POSTS_GEN = "user_posts_gen"
USER_POST_COUNT_KIND = "user_post_count"
PUBLISHED, ALL = "published", "all"  # what others see; what the author and admins see
REFRESH_TASK = "cache.refresh_post"
REFRESH_COUNTS_TASK = "cache.refresh_user_post_counts"
AUTHOR_DELETED = "author_deleted"  # a post.deleted that came with its author's deletion


@dataclass(frozen=True)
class PostSnapshot:
    """A post as read through the cache: enough to authorise and to answer a GET."""

    author_id: int
    status: str
    version: int
    public: dict[str, Any]


def entry_data(post: Post) -> dict[str, Any]:
    """What the cache holds for a post: the served representation and what authorises it."""
    return {"author": post.author_id, "status": post.status, "public": public_post(post)}


def snapshot(data: dict[str, Any], version: int) -> PostSnapshot:
    return PostSnapshot(data["author"], data["status"], version, data["public"])


def anonymous_view(data: dict[str, Any]) -> dict[str, Any] | None:
    """A cached post as an anonymous reader sees it: None for a draft (a 404 for them)."""
    return None if data["status"] == "draft" else cast(dict[str, Any], data["public"])


def read(cache: Cache, public_id: uuid.UUID) -> PostSnapshot | None:
    entry = cache.read(POST_KIND, public_id)
    return None if entry is None else snapshot(entry["d"], entry["v"])


def fill(cache: Cache, post: Post) -> PostSnapshot:
    """Store this state (never over a newer one) and return it as a snapshot."""
    data = entry_data(post)
    cache.fill(POST_KIND, post.public_id, post.version, data)
    return snapshot(data, post.version)


def count_entry(total: int, estimate: bool, limit: int) -> dict[str, Any]:
    return {"total": total, "estimate": estimate, "limit": limit}


# After-commit effects (app/events/handlers.py maps event types to these) ---------------------


def _followed_by_its_own_writes(event: DomainEvent) -> bool:
    """False for posts deleted with their author: nothing to write through, no list to count."""
    return event.refs.get("reason") != AUTHOR_DELETED


def invalidate(events: Sequence[DomainEvent]) -> None:
    """A tombstone at each new version, before the reply: no process serves the old state."""
    app_cache().invalidate(POST_KIND, [(e.aggregate_id, e.version) for e in events])


def write_through(events: Sequence[DomainEvent]) -> None:
    """A worker stores each new state (`cache.refresh_post`)."""
    kept = (e.aggregate_id for e in events if _followed_by_its_own_writes(e))
    for public_id in dict.fromkeys(kept):
        enqueue(REFRESH_TASK, str(public_id))


def _authors(events: Sequence[DomainEvent]) -> list[uuid.UUID]:
    """The authors whose counts these events change (a post.updated only by its status)."""
    changed = (
        e.refs["author_id"]
        for e in events
        if _followed_by_its_own_writes(e)
        and (e.event_type != "post.updated" or "status" in e.fields)
    )
    return list(dict.fromkeys(changed))


def bump_author_counts(events: Sequence[DomainEvent]) -> None:
    """A new generation for the authors' counts now: the next read, from any process, recounts."""
    bump_counts(_authors(events))


def refresh_author_counts(events: Sequence[DomainEvent]) -> None:
    """Then a worker writes the fresh counts through (`cache.refresh_user_post_counts`)."""
    for author in _authors(events):
        enqueue(REFRESH_COUNTS_TASK, str(author))


def forget_counts_of_deleted_users(events: Sequence[DomainEvent]) -> None:
    """A deleted user's counts: a new generation (no write-through: the list is a 404 now)."""
    bump_counts(e.aggregate_id for e in events)


def bump_counts(authors: Iterable[uuid.UUID]) -> None:
    app_cache().bump(USER_POSTS_GEN, authors)


# Warming ---------------------------------------------------------------------------------------


def warm(cache: Cache, session: Any, limit: int, batch: int) -> int:
    """Cache the `limit` most recent posts."""
    rows = PostRepository(session).most_recent(limit, batch=batch)
    return fill_in_batches(cache, POST_KIND, rows, entry_data, batch)


def register(app: Flask) -> None:
    register_warmer(app, "posts", warm)
