"""Revoked JWTs and revoked token families, shared by every web process.

The database row is the durable record (written in the logout's transaction); Redis, when
configured, answers the per-request check fast. If Redis is unreachable the check falls back to
the database, so a revoked token stays revoked and no request fails because of the cache.

A token family is every access and refresh token descended from one login (the `fam` claim,
carried through every rotation). A revoked family is a row keyed `fam:<id>` in the same table
(and `<prefix>fam:<id>` in Redis), kept until the last token it could cover has expired; the
check refuses a token whose jti *or* family is revoked, in one Redis round trip or one query.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pybreaker
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.auth.models import RevokedToken
from app.core.redis_client import REDIS_ERRORS, redis_breaker

log = logging.getLogger(__name__)
KEY_PREFIX = "postboard:blocklist:"
FAMILY_PREFIX = "fam:"  # a jti is a uuid, so it never starts with this


def family_key(family: str) -> str:
    """The blocklist key (row id) of a revoked family."""
    return FAMILY_PREFIX + family


class TokenBlocklist:
    def __init__(
        self,
        session: Session,
        redis_client: redis.Redis | None,
        breaker: pybreaker.CircuitBreaker | None = None,
    ) -> None:
        self.session = session
        self.redis = redis_client
        # While Redis is down the breaker is open and the check goes straight to the database,
        # instead of paying a failing Redis call on every request.
        self.breaker = breaker or redis_breaker("blocklist")

    def revoke(self, jti: str, expires_at: datetime) -> bool:
        """Record the revocation (the caller's transaction commits it); False if already revoked.

        The primary key makes it happen once: of two requests revoking the same token at the
        same time, the second one's commit fails with an IntegrityError.
        """
        if self.session.get(RevokedToken, jti) is not None:
            return False
        self.session.add(RevokedToken(jti=jti, expires_at=expires_at))
        return True

    def revoke_family(self, family: str, expires_at: datetime) -> bool:
        """Record a family's revocation (the caller commits); False if it was already revoked.

        `expires_at` must be no earlier than the expiry of every token of the family."""
        return self.revoke(family_key(family), expires_at)

    def mirror(self, jti: str, expires_at: datetime) -> None:
        """Copy a committed revocation to Redis, expiring with the token itself."""
        if self.redis is None:
            return
        ttl = max(1, int((expires_at - datetime.now(UTC)).total_seconds()) + 1)
        try:
            with self.breaker.calling():
                self.redis.set(KEY_PREFIX + jti, b"1", ex=ttl)
        except pybreaker.CircuitBreakerError:
            pass  # Redis is down: the database row holds, beat's resync copies it later
        except REDIS_ERRORS:
            log.warning("blocklist_redis_unavailable", extra={"op": "mirror"})

    def mirror_family(self, family: str, expires_at: datetime) -> None:
        self.mirror(family_key(family), expires_at)

    def is_revoked(self, jti: str, family: str | None = None) -> bool:
        """Is the token `jti`, or its `family`, revoked? One Redis EXISTS over both keys, or (no
        Redis, or Redis unreachable) one query."""
        keys = [jti] if family is None else [jti, family_key(family)]
        found = self._redis_exists([KEY_PREFIX + key for key in keys])
        if found is not None:
            return found
        return (
            self.session.scalar(
                sa.select(RevokedToken.jti).where(RevokedToken.jti.in_(keys)).limit(1)
            )
            is not None
        )

    def _redis_exists(self, keys: list[str]) -> bool | None:
        """Does Redis hold any of `keys`? None when Redis is off, failing or its breaker open."""
        if self.redis is None:
            return None
        try:
            with self.breaker.calling():
                return int(self.redis.exists(*keys)) > 0
        except pybreaker.CircuitBreakerError:
            return None  # open: Redis failed recently, the database answers until it resets
        except REDIS_ERRORS:
            log.warning("blocklist_redis_unavailable", extra={"op": "check"})
            return None

    def resync(self) -> int:
        """Copy every unexpired revocation from the database to Redis.

        Run periodically by beat: it repairs Redis after it lost data (a restart without
        persistence) or missed a mirror while it was unreachable, so within one interval a revoked
        token is refused again even where Redis had forgotten it.
        """
        if self.redis is None:
            return 0
        now = datetime.now(UTC)
        rows = self.session.execute(
            sa.select(RevokedToken.jti, RevokedToken.expires_at).where(
                RevokedToken.expires_at > now
            )
        ).all()
        pipe = self.redis.pipeline(transaction=False)
        for jti, expires_at in rows:
            pipe.set(KEY_PREFIX + jti, b"1", ex=max(1, int((expires_at - now).total_seconds()) + 1))
        pipe.execute()
        return len(rows)

    def purge_expired(self) -> int:
        result = self.session.execute(
            sa.delete(RevokedToken).where(RevokedToken.expires_at < datetime.now(UTC))
        )
        return int(getattr(result, "rowcount", 0) or 0)
