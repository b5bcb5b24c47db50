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

    def revoke(self, jti: str, expires_at: datetime) -> None:
        """Record the revocation (the caller's transaction commits it) and mirror it to Redis."""
        if self.session.get(RevokedToken, jti) is None:
            self.session.add(RevokedToken(jti=jti, expires_at=expires_at))

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

    def purge_expired(self) -> int:
        result = self.session.execute(
            sa.delete(RevokedToken).where(RevokedToken.expires_at < datetime.now(UTC))
        )
        return int(getattr(result, "rowcount", 0) or 0)
