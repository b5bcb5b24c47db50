"""Idempotency keys for the create routes (contract §5).

A `POST` may carry `Idempotency-Key: <1-255 printable ASCII characters>`. The first request with
a key claims it; when it succeeds, its response is stored, and a retry with the same key and the
same request (method, path and JSON body, compared canonically) gets that response back, marked
`Idempotent-Replayed: true`, and creates nothing. The same key with another request is 422.

    request --(key?)--> claim (INSERT in_progress) --> view --> 2xx: store it (completed)
                                                            \\-> anything else: delete the claim

Decisions:

- **Scope**: keys are per caller: `user:<uuid>` when the request carries a validly signed token
  (the rate limiter's cheap signature-and-expiry check, `app.core.limiting.client_key`), else
  `ip:<client address>`. Two callers never see each other's keys.
- **Only successes are kept.** A 4xx or 5xx (or an exception) deletes the claim, so the client
  can fix the request, or wait out the outage, and retry with the same key: a failure is never
  replayed, and a 500 is never cached. A failed create changed nothing, so running it again is
  safe.
- **Concurrent duplicates**: the claim is an INSERT on the primary key (scope, key), committed
  before the view runs, so of two simultaneous requests exactly one wins; the other sees the row
  and gets 409 "still in progress" (or the replay, once the winner finished).
- **Abandoned claims**: an in-progress claim holds the key for IDEMPOTENCY_LOCK_SECONDS (longer
  than gunicorn's request timeout), after which it counts as expired and a retry takes the key
  over. So a process killed mid-request blocks its key for a minute, not for the whole TTL. The
  one window this cannot close: a crash between the create's commit and storing its response;
  then a retry after the lock creates a second resource. Closing it would mean storing the
  response inside the create's own transaction.
- **Stored answers respect authentication**: the scope comes from the token's signature alone,
  so before a `user:` scope's stored row is answered (replay, 409, 422) the token gets the full
  check (blocklist, user still there). A token that fails it is anonymous for idempotency: the
  request is keyed per IP and runs as usual, so the route itself answers it (401 on a route that
  needs a login; registration ignores tokens anyway). A logged-out token never sees a replay.
- **Expiry**: a completed key is kept for IDEMPOTENCY_TTL_SECONDS (24 h by default); an expired
  row counts as absent (a new request overwrites it), and beat's `idempotency.purge_expired_keys`
  deletes expired rows every IDEMPOTENCY_PURGE_SECONDS.
- **Storage: the database, not Redis.** The database is there on the embedded default and in
  production alike, and it is transactional: the unique primary key makes the claim atomic on
  SQLite and PostgreSQL, and a stored response is as durable as the resource it describes.
  Redis is optional here (absent on the embedded default), the API must keep working while it is
  down (contract §5), and a Redis that restarts without persistence would forget keys and let
  retries create duplicates: exactly the failure this feature exists to prevent. The cost is two
  small writes per keyed POST, paid only by requests that send a key.
- **Not on login, refresh or logout**: they create no resource, and login and refresh answer
  with fresh secrets (tokens) that must never be stored in a database table or handed out
  again; a retried login simply logs in again, and logout is idempotent by nature.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from flask import Response, current_app, make_response, request
from flask_smorest import Blueprint
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from app.core.api import errors_doc
from app.core.db import Base, UTCDateTime, utcnow
from app.core.errors import Conflict, Unprocessable, ValidationFailed
from app.core.limiting import client_key, ip_key

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX = 255
# Printable ASCII (space to tilde), neither starting nor ending with a space: HTTP strips the
# spaces around a header value, so " k " would arrive as "k" (or "   " as nothing at all).
KEY_PATTERN = "^[!-~]([ -~]{0,253}[!-~])?$"
_KEY_RE = re.compile(KEY_PATTERN)
# The headers of the first response that a replay repeats (the rest is added per response).
REPLAYED_HEADERS = ("Content-Type", "Location", "ETag", "Cache-Control", "Vary")
SCOPE_MAX = 128
IN_PROGRESS, COMPLETED = "in_progress", "completed"
CLAIM_ATTEMPTS = 3

PARAMETER: dict[str, Any] = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": KEY_MAX, "pattern": KEY_PATTERN},
    "description": (
        "Makes the request safe to retry: a retry with the same key and the same body returns "
        "the first (successful) response, marked `Idempotent-Replayed: true`, and creates "
        "nothing; the same key with another body is 422, and while the first request is still "
        "running 409. Keys are per caller (per user, or per client IP when anonymous) and kept "
        "for 24 hours by default. A failed request does not use up its key."
    ),
}
REPLAYED_RESPONSE_HEADER: dict[str, Any] = {
    "schema": {"type": "string", "enum": ["true"]},
    "description": "Present on a replay of the response to an earlier request with this key.",
}


class IdempotencyKey(Base):
    """One claimed key: in progress, or completed with the response to replay."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(sa.String(SCOPE_MAX), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(KEY_MAX), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))  # sha256 hex of the request
    state: Mapped[str] = mapped_column(sa.String(16))
    response_status: Mapped[int | None] = mapped_column(sa.Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(sa.JSON)
    response_body: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
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
    """A live row that someone else's request put there."""

    fingerprint: str
    state: str
    status: int | None
    headers: dict[str, str] | None
    body: bytes | None
    created_at: datetime
    expires_at: datetime


class IdempotencyStore:
    """The `idempotency_keys` table. Each step is its own short transaction on its own
    connection, independent of the request's session: the claim must be committed (visible to
    concurrent requests) before the view runs, and releasing it must work whatever state the
    view left its session in. No step reads and then writes in one transaction (on SQLite a
    reader that turns writer can fail at once instead of waiting)."""

    def __init__(self, engine: Engine, *, ttl_seconds: int, lock_seconds: int) -> None:
        self.engine = engine
        self.ttl = timedelta(seconds=ttl_seconds)
        self.lock = timedelta(seconds=lock_seconds)

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
            if stored.expires_at > now:
                return stored
            if self._take_over(scope, key, fingerprint, now):
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
        return Stored(*row) if row is not None else None

    def complete(self, claim: Claim, response: Response) -> None:
        headers = {
            name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers
        }
        values = {
            "state": COMPLETED,
            "response_status": response.status_code,
            "response_headers": headers,
            "response_body": response.get_data(),
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

    def _take_over(self, scope: str, key: str, fingerprint: str, now: datetime) -> bool:
        """Overwrite an expired row; of several takers exactly one succeeds (the row is
        re-checked under the write lock, and the winner's row is no longer expired)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(TABLE)
                .where(TABLE.c.scope == scope, TABLE.c.key == key, TABLE.c.expires_at <= now)
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


def idempotency_key() -> str | None:
    """The request's key, None when it sent none; 400 when it is not 1-255 printable ASCII."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if len(key) > KEY_MAX or not _KEY_RE.fullmatch(key):
        message = f"Must be 1 to {KEY_MAX} printable ASCII characters."
        raise ValidationFailed(
            f"The {HEADER} header is not valid.", details=[{"field": HEADER, "message": message}]
        )
    return key


def caller_scope(*, anonymous: bool = False) -> str:
    """`user:<uuid>` for a validly signed token, else (or when `anonymous`) `ip:<address>`."""
    scope = ip_key() if anonymous else client_key()
    if len(scope) > SCOPE_MAX:  # only a strange forwarded address could be this long
        kind = scope.split(":", 1)[0]
        scope = f"{kind}:sha256:{hashlib.sha256(scope.encode()).hexdigest()}"
    return scope


def token_still_valid() -> bool:
    """The full check of the token whose signature gave a `user:` scope."""
    from app.core.pipeline import current_caller  # the token was read once, by the pipeline

    caller = current_caller()
    return caller is not None and caller.is_valid()


def request_fingerprint() -> str:
    """sha256 of method, path and the body; a JSON body in canonical form (key order and
    whitespace do not matter), any other body as sent."""
    raw = request.get_data(cache=True)
    try:
        body = json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, RecursionError):  # not JSON (the view will say so): the bytes, then
        body = raw
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def replay(stored: Stored) -> Response:
    response = Response(stored.body or b"", status=stored.status, headers=stored.headers or {})
    response.headers[REPLAYED_HEADER] = "true"
    return response


def answer_from_store(fingerprint: str, stored: Stored) -> Response:
    """The answer to a request whose key is already held: replay, 409 or 422."""
    if stored.fingerprint != fingerprint:
        raise Unprocessable(
            f"This {HEADER} was already used for a different request.",
            details=[
                {
                    "field": HEADER,
                    "message": "Already used with another method, path or body; use a new key.",
                }
            ],
        )
    if stored.state != COMPLETED or stored.status is None:
        raise in_progress()
    return replay(stored)


def idempotent(blp: Blueprint) -> Callable[[F], F]:
    """Honour `Idempotency-Key` on this view, and document it (header, 400, 409 and 422).

    Put it first, above `@blp.response`: it stores and replays the finished response.
    """

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = idempotency_key()
            if key is None:
                return view(*args, **kwargs)
            scope, fingerprint, keys = caller_scope(), request_fingerprint(), store()
            claimed = keys.claim(scope, key, fingerprint)
            user_scoped = scope.startswith("user:")
            if isinstance(claimed, Stored) and user_scoped and not token_still_valid():
                # Revoked, or its user deleted: anonymous, then (the view answers for itself).
                claimed = keys.claim(caller_scope(anonymous=True), key, fingerprint)
            if isinstance(claimed, Stored):
                return answer_from_store(fingerprint, claimed)
            try:
                response = make_response(view(*args, **kwargs))
            except BaseException:
                _release(keys, claimed)
                raise
            if 200 <= response.status_code < 300:
                try:
                    keys.complete(claimed, response)
                except Exception:
                    # The resource exists: answer with it. The key stays in progress until its
                    # lock expires, then a retry may run again.
                    log.exception("idempotency_store_failed")
            else:
                _release(keys, claimed)
            return response

        _document(wrapper)
        documented = errors_doc(blp, 400, 409, 422)(wrapper)
        return cast(F, documented)

    return decorator


def _release(keys: IdempotencyStore, claim: Claim) -> None:
    try:
        keys.release(claim)
    except Exception:  # the claim then expires with its lock
        log.exception("idempotency_release_failed")


def _document(wrapper: Any) -> None:
    """Add the header parameter (after any the view has) and the replay marker on success."""
    apidoc = wrapper._apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
    manual = apidoc.setdefault("manual_doc", {})
    manual["parameters"] = [*manual.get("parameters", []), PARAMETER]
    for status in apidoc.get("success_status_codes", []):
        responses = manual.setdefault("responses", {})
        headers = responses.setdefault(status, {}).setdefault("headers", {})
        headers[REPLAYED_HEADER] = REPLAYED_RESPONSE_HEADER
