"""The request pipeline: every route, one `before` and one `finish`, in an order written here.

    before (one before_request hook)
      1. start         one timer; a new server request id (logs, events, tasks); the client's
                       X-Request-ID, when well-formed, kept beside it (and echoed)
      2. hygiene       URI length (414), body size (413) and type (415: JSON, or a form for a
                       view declared @form_body)
      3. identify      the registered identifier (app/auth/guard.py) reads the bearer token once:
                       signature and expiry, no I/O; the caller's subject keys limit and log
      4. limit + reads ONE Redis round trip: the caller's rate-limit hit, which returns its window
                       (app/core/limiting.py), pipelined with the reads the caller asked for
                       (revocation, the user's cached state) and, for a GET whose route declared
                       @cached_read, its cache entry; a refused hit is a 429 here
      4b. cached read  that entry's bytes answered with the view's own builder (single_json)
                       when the route's render says the caller may see it (app/core/cached_read.py);
                       the view (5-7) is then skipped, the finish (8-14) is not
      4c. read ahead   the entries a route declared @reads_ahead (GraphQL's `user(id)`) come in
                       the same round trip; the handler's cache reads take them from there
                       (app/core/prefetch.py)
    view
      5. enforce       @authenticated: a cheap check of what steps 3-4 found (401)
      6. validate      @blp.arguments (400)
      7. handler       the view, calling a service
    finish (one after_request hook, errors included)
      8. limit headers X-RateLimit-* (Retry-After on 429 only)
      9. bodyless      OPTIONS -> 204; no Content-Type on 204/304
     10. cors          Vary: Origin; CORS headers for an allowed origin
     11. security      security headers, CSP, HSTS, Cache-Control default
     12. compress      br/gzip of JSON bodies, our ETag kept
     13. request id    X-Request-ID
     14. record        the access line and the metrics, from the one timer (with the operation's
                       name and type when the handler named one: GraphQL, app/graphql/)

A flood of revoked tokens is still throttled before anything refuses them: the blocklist reply
arrives with the limit's, but a refused hit answers 429 before the view's check runs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from flask import Flask, Request, Response, current_app, g, request
from flask.sessions import SessionInterface, SessionMixin

from app.core import cached_read, http_security, limiting, prefetch
from app.core.context import client_request_id_var, request_id_var
from app.core.errors import (
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    UnsupportedMediaType,
    UriTooLong,
)
from app.core.metrics import UNMATCHED_ROUTE, record_request
from app.core.operation_metrics import operation_label, record_operation
from app.core.security import Principal

log = logging.getLogger("app.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# gunicorn's own request-line limit is off (its 414 would be HTML); this one answers in JSON.
MAX_URI_BYTES = 8192
IDENTIFIER = "pipeline.identifier"  # app.extensions key
FORM_BODY_ATTR = "accepts_form_body"
FORM_TYPE = "application/x-www-form-urlencoded"


class Caller(Protocol):
    """Who is calling, as the identifier found it (app/auth/guard.py provides the real one)."""

    subject: str | None  # the user id of a validly signed token, else None (anonymous)

    def reads(self) -> list[tuple[Any, ...]]:
        """Redis commands to run in the pipeline's round trip (e.g. revocation, user state)."""
        ...

    def settle(self, replies: list[Any] | None) -> None:
        """Their replies, or None when Redis is absent or failed (then look up the slow way)."""
        ...

    def is_valid(self) -> bool:
        """The full check of the caller's credential (revocation, the user's current state)."""
        ...

    def principal(self) -> Principal | None:
        """The verified caller (None: anonymous); raises Unauthenticated for a refused token."""
        ...


class Anonymous:
    subject = None

    def reads(self) -> list[tuple[Any, ...]]:
        return []

    def settle(self, replies: list[Any] | None) -> None:
        return None

    def is_valid(self) -> bool:
        return False

    def principal(self) -> Principal | None:
        return None


Identifier = Callable[[Request], Caller]


class NoSessions(SessionInterface):
    """A bearer-token JSON API keeps no cookie session: no signer is built per request, and a
    write to `flask.session` fails loudly (NullSession)."""

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return self.make_null_session(app)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


def init_pipeline(app: Flask) -> None:
    """Register the pipeline's hooks: the only before/after_request hooks of the app."""
    app.session_interface = NoSessions()
    app.extensions.setdefault(IDENTIFIER, lambda _request: Anonymous())
    app.before_request(before)
    app.after_request(finish)
    app.teardown_request(_clear)


def identify_with(app: Flask, identifier: Identifier) -> None:
    """Set how step 3 identifies a caller (the auth package registers its token reader)."""
    app.extensions[IDENTIFIER] = identifier


def form_body(view: Any) -> Any:
    """Declare that a view takes an HTML form's body (application/x-www-form-urlencoded) where
    every other route takes JSON: the OAuth endpoints (RFC 6749) and the consent page's forms.
    Step 2 lets exactly these through; every other rule of the pipeline still applies."""
    setattr(view, FORM_BODY_ATTR, True)
    return view


def _takes_form() -> bool:
    if request.mimetype != FORM_TYPE or request.endpoint is None:
        return False
    view = current_app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, request.method.lower(), None) if view_class else view
    return bool(getattr(handler, FORM_BODY_ATTR, False))


def current_caller() -> Caller | None:
    return g.get("caller")


def name_operation(name: str | None, kind: str) -> None:
    """What a route that carries several operations (GraphQL) runs this time: the finish step
    puts it on the access line and in the operation metrics. `name` is the client's (None:
    anonymous); `kind` query, mutation, ..."""
    g.operation = (name, kind)


# --- before -------------------------------------------------------------------------------------


def before() -> Response | None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    # fullmatch: `$` alone would let a trailing newline through, into the response header.
    g.client_request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else None
    # Always the server's own: a client must not file its request under another's id.
    g.request_id = uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)
    g.client_request_id_token = client_request_id_var.set(g.client_request_id)
    _check_uri()
    _check_body()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    caller = g.caller = app.extensions[IDENTIFIER](request)
    hit = limiting.request_hit(app)
    limiter = app.extensions["rate_limiter"]
    reads = caller.reads()
    own = len(reads)
    planned = cached_read.plan(app, limiter.client)
    ahead = cached_read.plan_ahead(app, limiter.client)
    keys = ([planned.key] if planned is not None else []) + ahead
    window, replies = limiter.round_trip(hit, [*reads, *(("GET", key) for key in keys)])
    caller.settle(replies[:own] if replies else replies)
    if window is not None:
        g.rate_window = window
        if not window.admitted:
            limiting.on_breach(window)
            raise RateLimited(headers=window.headers())
    if ahead and replies:
        prefetch.hold(dict(zip(ahead, replies[own + len(keys) - len(ahead) :], strict=True)))
    if planned is not None and replies:
        return _serve_cached(planned, replies[own], caller)
    return None


def _serve_cached(planned: cached_read.Planned, raw: Any, caller: Caller) -> Response | None:
    """Step 4b: a declared cached read answered from the entry's bytes (app/core/cached_read.py);
    the view answers whatever this cannot (None)."""
    try:
        principal = caller.principal()
    except Unauthenticated:
        return None  # the view's @authenticated answers the 401
    return cached_read.serve(planned, raw, principal)


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
    if request.routing_exception is None and not request.is_json and not _takes_form():
        raise UnsupportedMediaType()


def _body_exceeds(limit: int) -> bool:
    if request.content_length is not None:
        return request.content_length > limit
    # No Content-Length (chunked): werkzeug stops reading at the limit without complaint, so
    # read the body now (cached for the parser) and look for a byte beyond it.
    body = request.get_data(cache=True)
    return len(body) >= limit and bool(request.environ["wsgi.input"].read(1))


# --- finish -------------------------------------------------------------------------------------


def finish(response: Response) -> Response:
    window = g.get("rate_window")
    if window is not None:
        for name, value in window.headers().items():
            response.headers[name] = value
    response = http_security.bodyless(response)
    response = http_security.cors(response)
    response = http_security.security_headers(response)
    response = http_security.compress(response)
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-ID"] = g.get("client_request_id") or request_id  # contract §2
    _record(request_id, response.status_code)
    return response


def _record(request_id: str, status: int) -> None:
    """The access line and the metrics, timed by the one timer started in `before`."""
    started = g.get("started")
    seconds = time.perf_counter() - started if started is not None else None
    rule = request.url_rule
    route = rule.rule if rule is not None else None
    record_request(request.method, route or UNMATCHED_ROUTE, status, seconds)
    operation = g.get("operation")
    if operation is not None:
        record_operation(route or UNMATCHED_ROUTE, operation[0], operation[1], status, seconds)
    if log.isEnabledFor(logging.INFO):
        caller = g.get("caller")
        client_id = g.get("client_request_id")
        fields = {
            "request_id": client_id or request_id,  # the id the response carries (contract §7)
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2) if seconds is not None else None,
            "user_id": caller.subject if caller is not None else None,
        }
        if operation is not None:
            fields["operation"] = operation_label(operation[0])
            fields["operation_type"] = operation[1]
        if client_id:
            fields["server_request_id"] = request_id  # the id this request's events carry
        # log.info without its caller lookup (a stack walk per request): the access line carries
        # no file or line, and the record goes through the same handlers and formatter.
        log.handle(log.makeRecord(log.name, logging.INFO, "", 0, "request", (), None, None, fields))


def _clear(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)
    client_token = g.pop("client_request_id_token", None)
    if client_token is not None:
        client_request_id_var.reset(client_token)
