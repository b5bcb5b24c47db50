"""What follows each domain event once its write has committed: the one table.

The unit of work (app/core/uow.py) stores every event in the write's transaction and, after the
commit, calls these handlers in order, each once with all of that commit's events of the type.
Read it as the answer to "what happens after a write?": the tombstone is written before the
reply (read-after-write from any process), the write-through task and count generations follow.
Later effects (the outbox relay, webhooks) are new entries here.
"""

from __future__ import annotations

from flask import Flask

from app.core.uow import EventHandler, register_event_handlers
from app.posts import cache as posts
from app.users import cache as users

EVENT_HANDLERS: dict[str, list[EventHandler]] = {
    "user.created": [users.write_through],
    "user.updated": [users.invalidate, users.write_through],
    "user.deleted": [users.invalidate, posts.forget_counts_of_deleted_users],
    "post.created": [posts.write_through, posts.bump_author_counts, posts.refresh_author_counts],
    "post.updated": [
        posts.invalidate,
        posts.write_through,
        posts.bump_author_counts,
        posts.refresh_author_counts,
    ],
    "post.deleted": [
        posts.invalidate,
        posts.write_through,
        posts.bump_author_counts,
        posts.refresh_author_counts,
    ],
}


def init_app(app: Flask) -> None:
    register_event_handlers(app, EVENT_HANDLERS)
