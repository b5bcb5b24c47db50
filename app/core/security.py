"""Password hashing (argon2) and the authenticated principal passed to services."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ADMIN_SCOPE = "admin"
# What a token may do for its user (contract §9); a first-party login carries all of them.
PROFILE_SCOPE = "profile"  # read the own user with their email
USERS_WRITE_SCOPE = "users:write"
POSTS_WRITE_SCOPE = "posts:write"
DRAFTS_READ_SCOPE = "drafts:read"
WEBHOOKS_SCOPE = "webhooks"
USER_SCOPES: tuple[str, ...] = (
    PROFILE_SCOPE,
    USERS_WRITE_SCOPE,
    POSTS_WRITE_SCOPE,
    DRAFTS_READ_SCOPE,
    WEBHOOKS_SCOPE,
)
SCOPE_WORDS: dict[str, str] = {  # the consent page and the docs say what each allows
    PROFILE_SCOPE: "See your profile, including your email address",
    USERS_WRITE_SCOPE: "Change or delete your account",
    POSTS_WRITE_SCOPE: "Write, change and delete your posts",
    DRAFTS_READ_SCOPE: "Read your unpublished drafts",
    WEBHOOKS_SCOPE: "Manage your webhooks",
    ADMIN_SCOPE: "Act as an administrator",
}


class Passwords:
    """Argon2id hashing; the cost comes from config so tests can run cheaply."""

    def __init__(self, time_cost: int = 3, memory_cost_kib: int = 65536) -> None:
        self.configure(time_cost, memory_cost_kib)

    def configure(self, time_cost: int, memory_cost_kib: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib)
        self._dummy: str | None = None  # made on first need: a hash costs ~0.2 s at start-up

    @property
    def _dummy_hash(self) -> str:
        """Verified against when the email is unknown, so both paths cost one hash (no
        enumeration). The web makes it as it starts (`prepare`; gunicorn's master, once for
        all its workers); elsewhere the first `verify` does, whatever the email."""
        if self._dummy is None:
            self._dummy = self._hasher.hash("dummy password for timing")
        return self._dummy

    def prepare(self) -> None:
        """Make the dummy hash now, so no login waits for it."""
        _ = self._dummy_hash

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        dummy = self._dummy_hash  # first, for known and unknown emails alike
        try:
            return self._hasher.verify(password_hash or dummy, password) and bool(password_hash)
        except (VerificationError, InvalidHashError, UnicodeError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


passwords = Passwords()


@dataclass(frozen=True)
class CurrentUser:
    """The token's user as the request sees it: its current state, read through the cache."""

    id: int
    public_id: uuid.UUID
    is_admin: bool


@dataclass(frozen=True)
class Principal:
    """Who is calling: the user's internal and public ids and their scopes."""

    user_id: int
    public_id: uuid.UUID
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def owns(self, owner_id: int) -> bool:
        return self.user_id == owner_id

    def may_act_for(self, owner_id: int) -> bool:
        return self.is_admin or self.owns(owner_id)

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def sees_private_of(self, owner_id: int) -> bool:
        """The email and history of a user: an admin, or the user with the `profile` scope."""
        return self.is_admin or (self.owns(owner_id) and self.has(PROFILE_SCOPE))

    def sees_drafts_of(self, owner_id: int) -> bool:
        """Drafts (and post history): an admin, or their author with the `drafts:read` scope."""
        return self.is_admin or (self.owns(owner_id) and self.has(DRAFTS_READ_SCOPE))
