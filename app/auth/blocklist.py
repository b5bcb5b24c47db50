"""Revoked JWTs and revoked token families, shared by every web process.

The database row is the durable record (written in the logout's transaction); Redis, when
configured, answers the per-request check fast. If Redis is unreachable the check falls back to
the database, so a revoked token stays revoked and no request fails because of the cache; a
circuit breaker then skips Redis for a while, and a revocation whose Redis copy could not be
written is owed and written before this process trusts Redis again.

A token family is every access and refresh token descended from one login (the `fam` claim,
carried through every rotation). A revoked family is a row keyed `fam:<id>` in the same table
(and `<prefix>fam:<id>` in Redis), kept until the last token it could cover has expired; the
check refuses a token whose jti *or* family is revoked, in one Redis round trip or one query.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

import pybreaker
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.auth.models import RevokedToken
from app.core.redis_client import REDIS_ERRORS, redis_breaker, skip_redis

log = logging.getLogger(__name__)
KEY_PREFIX = "postboard:blocklist:"
FAMILY_PREFIX = "fam:"  # a jti is a uuid, so it never starts with this

# Revocations whose mirror failed (Redis down), per Redis and process: written before this process
# reads Redis again, so a logout acknowledged during an outage is not forgotten when Redis returns
# (other processes may miss it until then, and at worst until beat's resync).
_owed: dict[str, dict[str, datetime]] = {}
_owed_lock = threading.Lock()


def _store_of(client: redis.Redis) -> str:
    """Which Redis a client talks to (owed mirrors are kept per Redis)."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}:{kwargs.get('path')}/{kwargs.get('db')}"


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
        if breaker is None and redis_client is not None:
            breaker = redis_breaker("blocklist@" + _store_of(redis_client), probe=redis_client.ping)
        self.breaker = breaker or pybreaker.CircuitBreaker()

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
        """Copy a committed revocation to Redis, expiring with the token itself; if Redis is
        down, owe it (written before this process trusts Redis again)."""
        if self.redis is None:
            return
        key = KEY_PREFIX + jti
        if not self._write_mirrors({key: expires_at}):
            with _owed_lock:
                _owed.setdefault(_store_of(self.redis), {})[key] = expires_at

    def _write_mirrors(self, items: dict[str, datetime]) -> bool:
        """SET each key with the token's remaining lifetime; False if Redis failed or is off."""
        if self.redis is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("redis is not set")
        now = datetime.now(UTC)
        ttls = {key: max(1, int((exp - now).total_seconds()) + 1) for key, exp in items.items()}
        if skip_redis(self.breaker):
            return False
        try:
            with self.breaker.calling():
                if len(ttls) == 1:
                    [(key, ttl)] = ttls.items()
                    self.redis.set(key, b"1", ex=ttl)
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    for key, ttl in ttls.items():
                        pipe.set(key, b"1", ex=ttl)
                    pipe.execute()
            return True
        except pybreaker.CircuitBreakerError:
            return False  # Redis failed just now: the database row holds meanwhile
        except REDIS_ERRORS:
            log.warning("blocklist_redis_unavailable", extra={"op": "mirror"})
            return False

    def _settle_owed(self) -> bool:
        """Write the mirrors this process owes this Redis; True once none is left."""
        if self.redis is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("redis is not set")
        store = _store_of(self.redis)
        with _owed_lock:
            now = datetime.now(UTC)
            owed = {k: exp for k, exp in _owed.get(store, {}).items() if exp > now}
            if not owed:
                _owed.pop(store, None)
                return True
        if not self._write_mirrors(owed):
            return False
        with _owed_lock:
            pending = _owed.get(store, {})
            for key, expires_at in owed.items():
                if pending.get(key) == expires_at:
                    del pending[key]
        return True

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

    def redis_ready(self) -> bool:
        """May Redis answer the check now (breaker closed, owed mirrors written)? The request
        pipeline asks before it reads the keys itself in its one round trip."""
        return self.redis is not None and not skip_redis(self.breaker) and self._settle_owed()

    def _redis_exists(self, keys: list[str]) -> bool | None:
        """Does Redis hold any of `keys`? None when Redis is off, failing or its breaker open."""
        if self.redis is None or not self.redis_ready():
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
