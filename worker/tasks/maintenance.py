"""Periodic housekeeping, scheduled by beat (each entry declared on its task)."""

from __future__ import annotations

import logging

import redis
from flask import current_app

from app.auth.blocklist import TokenBlocklist
from app.core.idempotency_store import store as idempotency_store
from app.core.redis_client import get_redis
from app.extensions import celery, db
from app.oauth.service import CODE_PURGE_SECONDS, OAuthService

log = logging.getLogger(__name__)


@celery.periodic_task(
    entry="purge-revoked-tokens",
    every=lambda config: float(config["PURGE_REVOKED_TOKENS_SECONDS"]),
    name="auth.purge_revoked_tokens",
)
def purge_revoked_tokens() -> int:
    """Delete blocklist rows whose tokens have expired anyway (idempotent)."""
    session = db.session()
    removed = TokenBlocklist(session, None).purge_expired()
    session.commit()
    log.info("revoked_tokens_purged", extra={"removed": removed})
    return removed


@celery.periodic_task(
    entry="resync-blocklist",
    every=lambda config: float(config["BLOCKLIST_RESYNC_SECONDS"]),
    name="auth.resync_blocklist",
    autoretry_for=(redis.RedisError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
)
def resync_blocklist() -> int:
    """Re-mirror unexpired revocations to Redis (idempotent: each SET just refreshes a TTL)."""
    copied = TokenBlocklist(db.session(), get_redis(current_app.config["REDIS_URL"])).resync()
    log.info("blocklist_resynced", extra={"tokens": copied})
    return copied


@celery.periodic_task(
    entry="purge-idempotency-keys",
    every=lambda config: float(config["IDEMPOTENCY_PURGE_SECONDS"]),
    name="idempotency.purge_expired_keys",
)
def purge_expired_idempotency_keys() -> int:
    """Delete idempotency keys past their expiry (idempotent; expired rows are ignored anyway)."""
    removed = idempotency_store().purge_expired()
    log.info("idempotency_keys_purged", extra={"removed": removed})
    return removed


@celery.periodic_task(
    entry="purge-oauth-codes",
    every=lambda _config: CODE_PURGE_SECONDS,
    name="oauth.purge_expired_codes",
)
def purge_expired_oauth_codes() -> int:
    """Delete authorization codes long expired (idempotent: an expired code is refused anyway)."""
    removed = OAuthService.from_app().purge_expired_codes()
    log.info("oauth_codes_purged", extra={"removed": removed})
    return removed
