"""Revoked JWTs, shared by every web process.

The database row is the durable record (written in the logout's transaction); Redis, when
configured, answers the per-request check fast. If Redis is unreachable the check falls back to
the database, so a revoked token stays revoked and no request fails because of the cache.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.auth.models import RevokedToken

log = logging.getLogger(__name__)
KEY_PREFIX = "postboard:blocklist:"


class TokenBlocklist:
    def __init__(self, session: Session, redis_client: redis.Redis | None) -> None:
        self.session = session
        self.redis = redis_client

    def revoke(self, jti: str, expires_at: datetime) -> bool:
        """Record the revocation (the caller's transaction commits it); False if already revoked.

        The primary key makes it happen once: of two requests revoking the same token at the
        same time, the second one's commit fails with an IntegrityError.
        """
        if self.session.get(RevokedToken, jti) is not None:
            return False
        self.session.add(RevokedToken(jti=jti, expires_at=expires_at))
        return True

    def mirror(self, jti: str, expires_at: datetime) -> None:
        """Copy a committed revocation to Redis, expiring with the token itself."""
        if self.redis is None:
            return
        ttl = max(1, int((expires_at - datetime.now(UTC)).total_seconds()) + 1)
        try:
            self.redis.set(KEY_PREFIX + jti, b"1", ex=ttl)
        except redis.RedisError:
            log.warning("blocklist_redis_unavailable", extra={"op": "mirror"})

    def is_revoked(self, jti: str) -> bool:
        if self.redis is not None:
            try:
                return bool(self.redis.exists(KEY_PREFIX + jti))
            except redis.RedisError:
                log.warning("blocklist_redis_unavailable", extra={"op": "check"})
        return (
            self.session.scalar(sa.select(RevokedToken.jti).where(RevokedToken.jti == jti))
            is not None
        )

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
