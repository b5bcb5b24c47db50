"""How a user is cached: the key kind, what an entry holds, its fill, its after-commit effects
(tombstone, write-through task) and its warmer. The mechanism is app/core/cache.py's."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask

from app.core.cache import Cache, app_cache
from app.core.cache_warming import fill_in_batches, register_warmer
from app.core.events import DomainEvent
from app.core.publishing import enqueue
from app.users.models import User
from app.users.repository import UserRepository
from app.users.representation import public_user

USER_KIND = "user"  # cache namespace: postboard:cache:<schema>:user:<public id>
REFRESH_TASK = "cache.refresh_user"


@dataclass(frozen=True)
class UserSnapshot:
    """A user as read through the cache: enough to authorise and to answer a GET."""

    owner_id: int
    version: int
    public: dict[str, Any]
    sealed_email: str
    is_admin: bool
    tokens_cutoff_ms: int | None = None  # the last password change: logins before it ended
    tokens_kept_family: str | None = None  # ... all but this one

    def email(self, cache: Cache) -> str:
        return cache.unseal(self.sealed_email)


def entry_data(user: User, cache: Cache) -> dict[str, Any]:
    """What the cache holds for a user: the served representation, never the email in the
    clear, never the hash."""
    data = {
        "owner": user.id,
        "admin": user.is_admin,
        "public": public_user(user),
        "email": cache.seal(user.email),
    }
    if user.tokens_cutoff_ms is not None:  # read on every authenticated request (the guard)
        data["cut"] = [user.tokens_cutoff_ms, user.tokens_kept_family]
    return data


def snapshot(data: dict[str, Any], version: int) -> UserSnapshot:
    cutoff, kept = data.get("cut") or (None, None)
    return UserSnapshot(
        data["owner"], version, data["public"], data["email"], data["admin"], cutoff, kept
    )


def read(cache: Cache, public_id: uuid.UUID) -> UserSnapshot | None:
    """The cached snapshot; None on a miss."""
    entry = cache.read(USER_KIND, public_id)
    return None if entry is None else snapshot(entry["d"], entry["v"])


def fill(cache: Cache, user: User) -> UserSnapshot:
    """Store this state (never over a newer one) and return it as a snapshot."""
    data = entry_data(user, cache)
    cache.fill(USER_KIND, user.public_id, user.version, data)
    return snapshot(data, user.version)


# After-commit effects (app/events/handlers.py maps event types to these) ---------------------


def invalidate(events: Sequence[DomainEvent]) -> None:
    """A tombstone at each new version, before the reply: no process serves the old state."""
    app_cache().invalidate(USER_KIND, [(e.aggregate_id, e.version) for e in events])


def write_through(events: Sequence[DomainEvent]) -> None:
    """A worker stores each new state (`cache.refresh_user`)."""
    for public_id in dict.fromkeys(e.aggregate_id for e in events):
        enqueue(REFRESH_TASK, str(public_id))


# Warming ---------------------------------------------------------------------------------------


def warm(cache: Cache, session: Any, limit: int, batch: int) -> int:
    """Cache the `limit` most recent users."""
    rows = UserRepository(session).most_recent(limit, batch=batch)
    return fill_in_batches(cache, USER_KIND, rows, lambda u: entry_data(u, cache), batch)


def register(app: Flask) -> None:
    register_warmer(app, "users", warm)
