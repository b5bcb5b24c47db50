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
- **Storage: the database, not Redis.** The database is there on every deployment and is
  transactional (the primary key makes the claim atomic), and a stored response is as durable
  as the resource it describes; Redis is optional, may be down (contract §5), and one that
  restarts without persistence would forget keys and let retries create duplicates. The cost
  is two small writes per keyed POST, paid only by requests that send a key.
- **Protected at rest** (`app.core.idempotency_seal`): the fingerprint is an HMAC under a key
  derived from SECRET_KEY, and the stored response (headers and body) is sealed with Fernet, so
  a database dump gives neither a password to brute-force nor an email. A row this key did not
  write (the unkeyed SHA-256 rows of the code before, or a rotated SECRET_KEY) counts as absent
  once completed (a retry runs again), and as held while its claim is unfinished.
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
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, current_app, make_response, request
from flask_smorest import Blueprint

from app.core.api import errors_doc
from app.core.errors import Unprocessable, ValidationFailed
from app.core.idempotency_seal import seal_for
from app.core.idempotency_store import (
    COMPLETED,
    HEADER,
    KEY_MAX,
    SCOPE_MAX,
    TABLE,
    Claim,
    IdempotencyKey,
    IdempotencyStore,
    Stored,
    in_progress,
    store,
)
from app.core.limiting import client_key, ip_key

# The store's names are re-exported: callers and tests import them from here.
__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "TABLE",
    "IdempotencyKey",
    "IdempotencyStore",
    "idempotent",
    "request_fingerprint",
    "store",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII (space to tilde), neither starting nor ending with a space: HTTP strips the
# spaces around a header value, so " k " would arrive as "k" (or "   " as nothing at all).
KEY_PATTERN = "^[!-~]([ -~]{0,253}[!-~])?$"
_KEY_RE = re.compile(KEY_PATTERN)

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
    """Keyed MAC of method, path and the body; a JSON body in canonical form (key order and
    whitespace do not matter), any other body as sent."""
    raw = request.get_data(cache=True)
    try:
        body = json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, RecursionError):  # not JSON (the view will say so): the bytes, then
        body = raw
    seal = seal_for(str(current_app.config["SECRET_KEY"]))
    return seal.fingerprint((request.method.encode(), request.path.encode(), body))


def replay(stored: Stored) -> Response:
    response = Response(stored.body or b"", status=stored.status, headers=stored.headers or {})
    response.headers[REPLAYED_HEADER] = "true"
    return response


def answer_from_store(fingerprint: str, stored: Stored) -> Response:
    """The answer to a request whose key is already held: replay, 409 or 422."""
    if stored.foreign:  # an unfinished claim written under another key: still held
        raise in_progress()
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
