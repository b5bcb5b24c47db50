"""Business rules for users: registration, profile changes, soft deletion, authorisation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.auth.throttle import email_change_throttle, password_throttle
from app.core.audit import security_event
from app.core.cache import Cache, app_cache
from app.core.conditional import check_version
from app.core.db import utcnow
from app.core.errors import Conflict, Forbidden, NotFound, RateLimited
from app.core.events import Event
from app.core.history import EventLog, Replayed, present
from app.core.http import cursor_codec
from app.core.pagination import CursorCodec, Page, PageParams
from app.core.security import Principal, passwords
from app.core.text import normalise_email
from app.core.uow import UnitOfWork
from app.extensions import db
from app.posts.cache import AUTHOR_DELETED
from app.posts.repository import PostRepository
from app.users import cache as user_cache
from app.users.cache import UserSnapshot
from app.users.models import User
from app.users.repository import UserRepository

PROFILE_FIELDS = ("email", "username", "display_name", "bio")
# What user.created records: every field of the representation (and the admin flag).
CREATED_FIELDS = (*PROFILE_FIELDS, "is_admin", "created_at", "updated_at")
USER_AGGREGATE = "user"


class UserService:
    """Writes record events (`user.created`, ...); what follows them after the commit (cache
    tombstones, write-through) is app/events/handlers.py's table, not this class's."""

    def __init__(self, session: Session, *, codec: CursorCodec, cache: Cache | None = None) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.posts = PostRepository(session)
        self.codec = codec
        self.cache = cache or Cache(None, ttl=0)

    @classmethod
    def from_app(cls) -> UserService:
        """The service on this app context's session, cache and cursor codec (routes, the
        guard, tasks and the CLI all build it here)."""
        return cls(db.session(), codec=cursor_codec(), cache=app_cache())

    def read(self, public_id: uuid.UUID) -> UserSnapshot:
        """Cache-aside: the cached snapshot, else the database (and then fill the cache)."""
        cached = user_cache.read(self.cache, public_id)
        return cached if cached is not None else user_cache.fill(self.cache, self.get(public_id))

    def token_state(self, public_id: uuid.UUID) -> UserSnapshot | None:
        """The token's user, in its current (cached) state, with the cut-off of its last
        password change; None when gone (token refused)."""
        try:
            return self.read(public_id)
        except NotFound:
            return None

    def refresh_cache(self, public_id: uuid.UUID) -> bool:
        """Write-through: store the current state (a no-op when the cache holds a newer one)."""
        user = self.users.get(public_id)
        if user is None:
            return False
        user_cache.fill(self.cache, user)
        return True

    # Reads -----------------------------------------------------------------------------------

    def get(self, public_id: uuid.UUID) -> User:
        user = self.users.get(public_id)
        if user is None:
            raise NotFound("No such user.")
        return user

    def many(self, public_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, User]:
        """The live users among these ids, in one query (a page of posts' authors)."""
        return {user.public_id: user for user in self.users.get_many(public_ids)}

    def list(self, params: PageParams) -> Page[User]:
        return self.users.page(params, self.codec)

    @staticmethod
    def email_visible(user: User, viewer: Principal | None) -> bool:
        return viewer is not None and viewer.sees_private_of(user.id)

    # History ---------------------------------------------------------------------------------

    def events(self, public_id: uuid.UUID, params: PageParams, *, viewer: Principal) -> Page[Event]:
        """The user's audit trail, oldest first (the user themself, admins)."""
        self._history_reader(public_id, viewer)
        return EventLog(self.session).page(USER_AGGREGATE, public_id, params, self.codec)

    def as_of(self, public_id: uuid.UUID, at: datetime, *, viewer: Principal) -> Replayed:
        """The user as they were at `at`, rebuilt from their events alone (404 before they
        existed or once deleted; 422 before the history kept)."""
        self._history_reader(public_id, viewer)
        return present(EventLog(self.session).state_at(USER_AGGREGATE, public_id, at), "user")

    def _history_reader(self, public_id: uuid.UUID, viewer: Principal) -> User:
        """The user whose history `viewer` may read: their own, or anyone's for an admin, even
        once deleted. Someone else's is 403 (404 once deleted: deleted users are 404 to all)."""
        user = self.users.get_any(public_id)
        if user is None:
            raise NotFound("No such user.")
        if not viewer.sees_private_of(user.id):
            if user.deleted_at is not None:
                raise NotFound("No such user.")
            raise Forbidden("Only the user themself and admins may read a user's history.")
        return user

    # Writes ----------------------------------------------------------------------------------

    def register(self, data: dict[str, Any], *, actor: Principal | None = None) -> User:
        email = normalise_email(data["email"])  # the schema did; callers outside HTTP too
        self._ensure_free(email=email, username=data["username"])
        now = utcnow()
        user = User(
            public_id=uuid.uuid4(),
            email=email,
            username=data["username"],
            password_hash=passwords.hash(data["password"]),
            display_name=data.get("display_name") or data["username"],
            bio=data.get("bio", ""),
            is_admin=bool(data.get("is_admin", False)),
            created_at=now,
            updated_at=now,
            version=1,
        )
        with UnitOfWork(self.session, actor_id=actor.public_id if actor else None) as uow:
            self.users.add(user)
            self.session.flush()
            uow.actor_id = uow.actor_id or user.public_id
            uow.record(
                "user.created",
                aggregate_type=USER_AGGREGATE,
                aggregate_id=user.public_id,
                version=user.version,
                values={f: getattr(user, f) for f in CREATED_FIELDS},
                secret_fields=("password",),
                occurred_at=now,
            )
        return user

    def update(
        self,
        public_id: uuid.UUID,
        changes: dict[str, Any],
        *,
        actor: Principal,
        if_match: Collection[int] | None = None,
        family: str | None = None,
        address: str = "unknown",
    ) -> User:
        """Apply PUT (all profile fields) or PATCH (some) changes; a no-op writes nothing.

        A new password ends every login of the user but `family` (the actor's own login, when
        the actor is the user): their tokens are refused from then on (app/auth/guard.py)."""
        user = self.get(public_id)
        if not actor.may_act_for(user.id):
            raise Forbidden("You may only change your own account.")
        check_version(user.version, if_match)

        changes = dict(changes)
        new_password = changes.pop("password", None)
        current_password = changes.pop("current_password", None)
        if "email" in changes:
            changes["email"] = normalise_email(changes["email"])
        values = {k: v for k, v in changes.items() if getattr(user, k) != v}
        if new_password is not None:  # a lone current_password changes nothing: ignored
            self._check_password_change(user, actor, current_password)
        if not values and new_password is None:
            return user
        if "email" in values:  # before the uniqueness check: it answers whether one is taken
            _count_email_change(user, address)
        self._ensure_free(
            email=values.get("email"), username=values.get("username"), exclude_id=user.id
        )
        now = utcnow()
        with UnitOfWork(self.session, actor_id=actor.public_id) as uow:
            for key, value in values.items():
                setattr(user, key, value)
            if new_password is not None:
                user.password_hash = passwords.hash(new_password)
                user.tokens_cutoff_ms = int(time.time() * 1000)
                user.tokens_kept_family = family if actor.owns(user.id) else None
            user.updated_at = now
            user.version += 1
            uow.record(
                "user.updated",
                aggregate_type=USER_AGGREGATE,
                aggregate_id=user.public_id,
                version=user.version,
                values={**values, "updated_at": now},
                secret_fields=("password",) if new_password is not None else (),
                occurred_at=now,
            )
        if new_password is not None:
            security_event(
                "password_changed",
                user_id=str(user.public_id),
                actor_id=str(actor.public_id),
                other_logins_ended=True,
            )
        return user

    def delete(
        self, public_id: uuid.UUID, *, actor: Principal, if_match: Collection[int] | None = None
    ) -> None:
        """Soft-delete the user and every post of theirs, in one transaction."""
        user = self.get(public_id)
        if not actor.may_act_for(user.id):
            raise Forbidden("You may only delete your own account.")
        check_version(user.version, if_match)
        now = utcnow()
        with UnitOfWork(self.session, actor_id=actor.public_id) as uow:
            user.deleted_at = now
            user.updated_at = now
            user.version += 1
            uow.record(
                "user.deleted",
                aggregate_type=USER_AGGREGATE,
                aggregate_id=user.public_id,
                version=user.version,
                values={"deleted_at": now, "updated_at": now},
                occurred_at=now,
            )
            # Each of their posts gets its own post.deleted, in this transaction.
            gone = self.posts.soft_delete_by_author(user.id, now)
            for post_id, post_version in gone:
                uow.record(
                    "post.deleted",
                    aggregate_type="post",
                    refs={"author_id": user.public_id, "reason": AUTHOR_DELETED},
                    aggregate_id=post_id,
                    version=post_version,
                    values={"deleted_at": now, "updated_at": now},
                    occurred_at=now,
                )

    # Helpers ---------------------------------------------------------------------------------

    def _ensure_free(
        self, *, email: str | None, username: str | None, exclude_id: int | None = None
    ) -> None:
        taken = self.users.taken(email=email, username=username, exclude_id=exclude_id)
        if taken:
            raise Conflict(
                f"That {' and '.join(taken)} {'is' if len(taken) == 1 else 'are'} already taken.",
                details=[{"field": f, "message": f"That {f} is already taken."} for f in taken],
            )

    @staticmethod
    def _check_password_change(user: User, actor: Principal, current_password: str | None) -> None:
        # An admin may reset anyone's password; users prove they know their current one.
        if actor.is_admin and not actor.owns(user.id):
            return
        # Guesses are limited like logins: a stolen access token must not buy a password.
        guesses = password_throttle()
        key = str(user.public_id)
        if guesses.is_locked(key):
            security_event("password_change_throttled", user_id=key)
            raise RateLimited(
                "Too many wrong current passwords: try again later.",
                headers={"Retry-After": str(guesses.retry_after(key))},
            )
        # 403, not 400: the body is well-formed; what is missing is proof of who is asking.
        if current_password is None or not passwords.verify(user.password_hash, current_password):
            security_event("password_change_failed", user_id=key)
            if current_password is not None:
                guesses.record_failure(key)
            raise Forbidden(
                "The current password is required to set a new one.",
                details=[{"field": "current_password", "message": "Missing or incorrect."}],
            )
        guesses.reset(key)


def _count_email_change(user: User, address: str) -> None:
    """Email changes are limited like registrations, per user and per client address: each
    answers whether an email is taken (429 beyond the RATELIMIT_REGISTER rate)."""
    changes = email_change_throttle()
    for key in (f"user:{user.public_id}", f"ip:{address}"):
        if not changes.hit(key):
            security_event("email_change_throttled", user_id=str(user.public_id))
            raise RateLimited(
                "Too many email changes: try again later.",
                headers={"Retry-After": str(changes.retry_after(key))},
            )
