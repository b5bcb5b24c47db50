"""Periodic housekeeping, scheduled by beat."""

from __future__ import annotations

import logging

from celery import shared_task

from app.auth.blocklist import TokenBlocklist
from app.extensions import db

log = logging.getLogger(__name__)


@shared_task(name="auth.purge_revoked_tokens")
def purge_revoked_tokens() -> int:
    """Delete blocklist rows whose tokens have expired anyway (idempotent)."""
    session = db.session()
    try:
        removed = TokenBlocklist(session, None).purge_expired()
        session.commit()
    finally:
        db.session.remove()
    log.info("revoked_tokens_purged", extra={"removed": removed})
    return removed
