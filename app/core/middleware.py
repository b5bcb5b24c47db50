"""The request pipeline, in one place.

    request
      -> metrics timer       app/core/metrics.py registers its hook first, so every answer is timed
      -> request id          _start: X-Request-ID (the client's when well-formed), timer
      -> request hygiene     _check_uri (414), _check_body (413, 415)
      -> auth (identify)     _identify: the bearer token's signature and expiry, no I/O; sets
                             g.rl_subject, the user the limit and the log are keyed on
      -> rate limit          flask-limiter's before_request (app/core/limiting.py), per user when
                             identified, else per IP; route limits (login, register) at the view
      -> auth (enforce)      each view's @authenticated: blocklist, the user's current state; 401
      -> validate            each view's @blp.arguments (marshmallow): 400 / 422
      -> handler             the view, calling a service
    response
      <- access log          _finish: one JSON line (request id, method, path, route, status,
                             duration, user id when known) around it all; metrics alongside

Auth is split in two on purpose: identifying the caller needs only the token's signature, so
the limit can be keyed per user before any database or Redis work; the full check (revocation,
deleted or demoted user) runs after the limit, so a flood of revoked tokens is throttled before
it reaches the blocklist. `register_middleware` registers the hooks in this order; the limiter is
registered after them (`register_rate_limits` in the factory), so Flask runs it after `_identify`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from app.core.context import request_id_var
from app.core.errors import PayloadTooLarge, UnsupportedMediaType, UriTooLong

log = logging.getLogger("app.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# gunicorn's own request-line limit is off (its 414 would be HTML); this one answers in JSON.
MAX_URI_BYTES = 8192


def register_middleware(app: Flask) -> None:
    app.before_request(_start)
    app.before_request(_check_uri)
    app.before_request(_check_body)
    app.before_request(_identify)
    app.after_request(_finish)
    app.teardown_request(_clear)


def _start() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    # fullmatch: `$` alone would let a trailing newline through, into the response header.
    g.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)


def _check_uri() -> None:
    raw = request.environ.get("RAW_URI") or request.full_path
    if len(raw.encode("latin-1", "replace")) > MAX_URI_BYTES:
        raise UriTooLong(f"The request URI is longer than {MAX_URI_BYTES} bytes.")


def _has_body() -> bool:
    return (
        bool(request.content_length)
        or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    )


def _check_body() -> None:
    if request.method not in BODY_METHODS or not _has_body():
        return
    limit = request.max_content_length
    if limit is not None and _body_exceeds(limit):
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    # An unknown route or method is a 404/405 whatever the body: routing answers first.
    if request.routing_exception is None and not request.is_json:
        raise UnsupportedMediaType()


def _body_exceeds(limit: int) -> bool:
    if request.content_length is not None:
        return request.content_length > limit
    # No Content-Length (chunked): werkzeug stops reading at the limit without complaint, so
    # read the body now (cached for the parser) and look for a byte beyond it.
    body = request.get_data(cache=True)
    return len(body) >= limit and bool(request.environ["wsgi.input"].read(1))


def _identify() -> None:
    # Imported here: limiting imports flask-jwt-extended, which this module need not load early.
    from app.core.limiting import token_subject

    token_subject()


def _finish(response: Response) -> Response:
    request_id = getattr(g, "request_id", None) or uuid.uuid4().hex
    response.headers["X-Request-ID"] = request_id
    if response.status_code not in (429, 503):
        # flask-limiter adds Retry-After to every limited response; it only means something here.
        response.headers.pop("Retry-After", None)
    started = getattr(g, "started", None)
    log_access(
        request_id,
        request.method,
        request.path,
        request.url_rule.rule if request.url_rule else None,
        response.status_code,
        round((time.perf_counter() - started) * 1000, 2) if started else None,
        g.get("rl_subject"),
    )
    return response


def log_access(
    request_id: str,
    method: str,
    path: str,
    route: str | None,
    status: int,
    duration_ms: float | None,
    user_id: str | None,
) -> None:
    """The one access line of a request: `_finish` writes it, and the fast lane for the reads it
    answers itself (app/core/fast_reads.py)."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "user_id": user_id,
    }
    # log.info's record without its caller lookup (a stack walk on every request): the line
    # carries no file or line number anyway, and the record goes through the same handlers.
    log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "request", (), None, None, fields))


def _clear(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)
