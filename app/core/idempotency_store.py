"""The `idempotency_keys` table and its store: claims, stored (sealed) responses, expiry.

The decisions are described in `app.core.idempotency`, which uses this store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from flask import Response, current_app
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, utcnow
from app.core.errors import Conflict
from app.core.idempotency_seal import IdempotencySeal, InvalidSeal, seal_for

log = logging.getLogger("app.core.idempotency")

HEADER = "Idempotency-Key"
KEY_MAX = 255
# The headers of the first response that a replay repeats (the rest is added per response).
REPLAYED_HEADERS = ("Content-Type", "Location", "ETag", "Cache-Control", "Vary")
SCOPE_MAX = 128
IN_PROGRESS, COMPLETED = "in_progress", "completed"
CLAIM_ATTEMPTS = 3


class IdempotencyKey(Base):
    """One claimed key: in progress, or completed with the response to replay."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(sa.String(SCOPE_MAX), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(KEY_MAX), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))  # keyed: IdempotencySeal.fingerprint
    state: Mapped[str] = mapped_column(sa.String(16))
    response_status: Mapped[int | None] = mapped_column(sa.Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)  # unused: sealed
    response_body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # headers + body, sealed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (
        sa.CheckConstraint("state IN ('in_progress', 'completed')", name="state_valid"),
    )


TABLE = cast(sa.Table, IdempotencyKey.__table__)


@dataclass(frozen=True)
class Claim:
    """Our hold on a key; `created_at` tells our claim apart from a later one's takeover."""

    scope: str
    key: str
    created_at: datetime


@dataclass(frozen=True)
class Stored:
    """A live row that someone else's request put there; `foreign` when this SECRET_KEY did
    not write it (its fingerprint cannot be compared, its response cannot be unsealed)."""

    fingerprint: str
    state: str
    status: int | None
    headers: dict[str, str] | None
    body: bytes | None
    created_at: datetime
    expires_at: datetime
    foreign: bool = False


class IdempotencyStore:
    """The `idempotency_keys` table. Each step is its own short transaction on its own
    connection, independent of the request's session: the claim must be committed (visible to
    concurrent requests) before the view runs, and releasing it must work whatever state the
    view left its session in. No step reads and then writes in one transaction (on SQLite a
    reader that turns writer can fail at once instead of waiting)."""

    def __init__(
        self, engine: Engine, *, ttl_seconds: int, lock_seconds: int, secret: str | None = None
    ) -> None:
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_seconds)
        self.lock = timedelta(seconds=lock_seconds)
        self._secret = secret  # None: the current app's SECRET_KEY, when first needed

    @property
    def seal(self) -> IdempotencySeal:
        return seal_for(self._secret or str(current_app.config["SECRET_KEY"]))

    def claim(self, scope: str, key: str, fingerprint: str) -> Claim | Stored:
        """Claim the key, or return the live row that holds it."""
        for _ in range(CLAIM_ATTEMPTS):
            now = utcnow()
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        sa.insert(TABLE).values(
                            scope=scope, key=key, **self._fresh(fingerprint, now)
                        )
                    )
                return Claim(scope, key, now)
            except IntegrityError:
                pass  # the key is taken (or was a moment ago): look at who holds it
            stored = self.get(scope, key)
            if stored is None:
                continue  # released in the meantime: claim it again
            stale = stored.foreign and stored.state == COMPLETED  # nothing we can replay
            if stored.expires_at > now and not stale:
                return stored
            if self._take_over(scope, key, fingerprint, now, stored):
                return Claim(scope, key, now)
        # Others keep claiming and releasing this key right now: let the client retry later.
        raise in_progress()

    def get(self, scope: str, key: str) -> Stored | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    TABLE.c.fingerprint,
                    TABLE.c.state,
                    TABLE.c.response_status,
                    TABLE.c.response_headers,
                    TABLE.c.response_body,
                    TABLE.c.created_at,
                    TABLE.c.expires_at,
                ).where(TABLE.c.scope == scope, TABLE.c.key == key)
            ).one_or_none()
        if row is None:
            return None
        fingerprint, state, status, _headers, sealed, created_at, expires_at = row
        stored = Stored(fingerprint, state, status, None, None, created_at, expires_at)
        if not self.seal.owns(fingerprint):
            return replace(stored, foreign=True)
        if state != COMPLETED or sealed is None:
            return stored
        try:
            headers, body = self.seal.unseal(sealed)
        except InvalidSeal:
            log.warning("idempotency_response_unreadable")  # altered: never replayed
            return replace(stored, foreign=True)
        return replace(stored, headers=headers, body=body)

    def complete(self, claim: Claim, response: Response) -> None:
        headers = {
            name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers
        }
        values = {
            "state": COMPLETED,
            "response_status": response.status_code,
            "response_headers": None,
            "response_body": self.seal.seal(headers, response.get_data()),
            "expires_at": utcnow() + self.ttl,
        }
        with self.engine.begin() as conn:
            conn.execute(sa.update(TABLE).where(*self._ours(claim)).values(**values))

    def release(self, claim: Claim) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(TABLE).where(*self._ours(claim)))

    def purge_expired(self) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(sa.delete(TABLE).where(TABLE.c.expires_at <= utcnow()))
        return int(result.rowcount or 0)

    def _fresh(self, fingerprint: str, now: datetime) -> dict[str, Any]:
        return {
            "fingerprint": fingerprint,
            "state": IN_PROGRESS,
            "response_status": None,
            "response_headers": None,
            "response_body": None,
            "created_at": now,
            "expires_at": now + self.lock,
        }

    def _take_over(
        self, scope: str, key: str, fingerprint: str, now: datetime, seen: Stored
    ) -> bool:
        """Overwrite an expired row, or the foreign row `seen`; of several takers exactly one
        succeeds (the row is re-checked under the write lock, and the winner's row is neither
        expired nor foreign)."""
        replaceable = TABLE.c.expires_at <= now
        if seen.foreign:
            unchanged = sa.and_(
                TABLE.c.fingerprint == seen.fingerprint, TABLE.c.created_at == seen.created_at
            )
            replaceable = sa.or_(replaceable, unchanged)
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(TABLE)
                .where(TABLE.c.scope == scope, TABLE.c.key == key, replaceable)
                .values(**self._fresh(fingerprint, now))
            )
        return bool(result.rowcount)

    @staticmethod
    def _ours(claim: Claim) -> tuple[Any, ...]:
        # Never touch a row that another request took over after our claim expired.
        return (
            TABLE.c.scope == claim.scope,
            TABLE.c.key == claim.key,
            TABLE.c.state == IN_PROGRESS,
            TABLE.c.created_at == claim.created_at,
        )


def store() -> IdempotencyStore:
    from app.extensions import db

    config = current_app.config
    return IdempotencyStore(
        db.engine,
        ttl_seconds=int(config["IDEMPOTENCY_TTL_SECONDS"]),
        lock_seconds=int(config["IDEMPOTENCY_LOCK_SECONDS"]),
    )


def in_progress() -> Conflict:
    return Conflict(
        "A request with this key is still in progress; retry it shortly.",
        details=[{"field": HEADER, "message": "A request with this key is still in progress."}],
    )
