"""Domain errors and the one place that turns any error into the contract's envelope.

Services raise `AppError` subclasses; routes never build error responses themselves. Werkzeug's
HTTP errors (unknown route, 405, 413, ...) and uncaught exceptions go through the same mapping.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from itertools import islice
from typing import Any

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from app.core.audit import security_event

log = logging.getLogger(__name__)

Details = list[dict[str, str]]


class AppError(Exception):
    """An error with a contract code, an HTTP status and optional per-field details."""

    status = 500
    code = "INTERNAL_ERROR"
    default_message = "An unexpected error occurred."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Details | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.details = details or []
        self.headers = dict(headers or {})


class ValidationFailed(AppError):
    status, code, default_message = 400, "VALIDATION_ERROR", "The request is not valid."


class Unauthenticated(AppError):
    status, code, default_message = 401, "UNAUTHENTICATED", "Authentication is required."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", "Bearer")


class Forbidden(AppError):
    status, code, default_message = 403, "FORBIDDEN", "You may not do this."


class InsufficientScope(Forbidden):
    """A valid token that lacks the scope an action needs (RFC 6750 §3.1)."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"This token lacks the '{scope}' scope.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )
        self.scope = scope


class NotFound(AppError):
    status, code, default_message = 404, "NOT_FOUND", "The resource was not found."


class Conflict(AppError):
    status, code, default_message = 409, "CONFLICT", "The request conflicts with existing data."


class PreconditionFailed(AppError):
    status, code = 412, "PRECONDITION_FAILED"
    default_message = "The resource has changed since you last read it."


class PayloadTooLarge(AppError):
    status, code, default_message = 413, "PAYLOAD_TOO_LARGE", "The request body is too large."


class UriTooLong(AppError):
    status, code, default_message = 414, "URI_TOO_LONG", "The request URI is too long."


class UnsupportedMediaType(AppError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"
    default_message = "The request body must be application/json."


class Unprocessable(AppError):
    status, code, default_message = 422, "UNPROCESSABLE", "The request cannot be processed."


class RateLimited(AppError):
    status, code, default_message = 429, "RATE_LIMITED", "Too many requests."


class ServiceUnavailable(AppError):
    status, code, default_message = 503, "SERVICE_UNAVAILABLE", "The service is unavailable."


# HTTP statuses that werkzeug raises itself, mapped to the contract's codes.
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("VALIDATION_ERROR", "The request is not valid."),
    401: ("UNAUTHENTICATED", "Authentication is required."),
    403: ("FORBIDDEN", "You may not do this."),
    404: ("NOT_FOUND", "The resource was not found."),
    405: ("METHOD_NOT_ALLOWED", "The method is not allowed for this resource."),
    409: ("CONFLICT", "The request conflicts with existing data."),
    412: ("PRECONDITION_FAILED", "The resource has changed since you last read it."),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large."),
    414: ("URI_TOO_LONG", "The request URI is too long."),
    415: ("UNSUPPORTED_MEDIA_TYPE", "The request body must be application/json."),
    422: ("UNPROCESSABLE", "The request cannot be processed."),
    428: ("PRECONDITION_FAILED", "This request must be conditional."),
    429: ("RATE_LIMITED", "Too many requests."),
    500: ("INTERNAL_ERROR", "An unexpected error occurred."),
    503: ("SERVICE_UNAVAILABLE", "The service is unavailable."),
}


# A huge bad body never buys a huge answer: at most this many details (contract §6), each
# field name and message cut to a readable length (a field name can be a client's 1 MB key).
MAX_DETAILS = 50
MAX_DETAIL_CHARS = 200
TRUNCATED_SUFFIX = f" (only the first {MAX_DETAILS} problems are listed)"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def envelope(code: str, message: str, details: Iterable[Mapping[str, str]] = ()) -> dict:
    """The contract's error body: `{"error": {"code", "message", "details"?}}`, with at most
    MAX_DETAILS details (the message says so when some were left out)."""
    error: dict[str, Any] = {"code": code, "message": message}
    capped = [
        {"field": _clip(str(d["field"])), "message": _clip(str(d["message"]))}
        for d in islice(details, MAX_DETAILS + 1)
    ]
    if len(capped) > MAX_DETAILS:
        capped = capped[:MAX_DETAILS]
        error["message"] = message.rstrip(".") + TRUNCATED_SUFFIX + "."
    if capped:
        error["details"] = capped
    return {"error": error}


# app.extensions key: {blueprint name: renderer}. A blueprint that speaks another error format
# (GraphQL's `{"errors": [...]}`) renders the same error (code, message, details) its own way.
ERROR_RENDERERS = "errors.renderers"
ErrorRenderer = Callable[[dict[str, Any]], dict[str, Any]]


def render_errors_with(app: Flask, blueprint: str, renderer: ErrorRenderer) -> None:
    """Errors answered for `blueprint`'s routes get `renderer(envelope["error"])` as their body
    (status and headers unchanged): one mapping of exceptions, two formats."""
    app.extensions.setdefault(ERROR_RENDERERS, {})[blueprint] = renderer


def error_response(
    status: int,
    code: str,
    message: str,
    details: Iterable[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = envelope(code, message, details)
    if has_request_context() and request.blueprint is not None:
        renderer = current_app.extensions.get(ERROR_RENDERERS, {}).get(request.blueprint)
        if renderer is not None:
            body = renderer(body["error"])
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_messages(messages: Any, limit: int = MAX_DETAILS + 1) -> Details:
    """Turn marshmallow's nested `{field: [msg]}` into the contract's `[{field, message}]`; stops
    after `limit` entries (one more than an envelope shows, so it can tell some were left out)."""
    return list(islice(_walk_messages(messages, ""), limit))


def _walk_messages(messages: Any, prefix: str) -> Iterator[dict[str, str]]:
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                name = prefix or "body"
            yield from _walk_messages(value, name)
    elif isinstance(messages, list | tuple):
        for item in messages:
            if isinstance(item, Mapping | list | tuple):
                yield from _walk_messages(item, prefix)
            else:
                yield {"field": prefix or "body", "message": str(item)}
    else:
        yield {"field": prefix or "body", "message": str(messages)}


def handle_app_error(error: AppError) -> Response:
    if error.status >= 500:
        log.error("app_error", extra={"code": error.code})
    if isinstance(error, Forbidden):
        forbidden_event(error)
    return error_response(error.status, error.code, error.message, error.details, error.headers)


def forbidden_event(error: Forbidden) -> None:
    """A `forbidden` security event: who tried what (ids and route only, never a credential)."""
    fields: dict[str, Any] = {"reason": error.message}
    if has_request_context():
        fields.update(method=request.method, path=request.path)
        from app.core.limiting import caller_subject  # lazily: limiting builds on errors

        if sub := caller_subject():
            fields["user_id"] = sub
    security_event("forbidden", **fields)


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code, message = HTTP_CODES.get(
        status, ("INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR", error.name)
    )
    details: Details = []
    data = getattr(error, "data", None) or {}
    if data.get("messages"):  # webargs validation errors: {location: {field: [msg]}}
        for location_messages in data["messages"].values():
            details.extend(flatten_messages(location_messages))
            if len(details) > MAX_DETAILS:
                break
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(status, code, message, details, headers)


# Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER_SECONDS = 2
# SQLite's words for "another writer holds the lock" (after the busy timeout ran out).
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


def database_unavailable(error: BaseException) -> bool:
    """Is `error` the database being unreachable or busy (stopped, restarting, refusing, pool
    exhausted, connection dropped mid-request, SQLite locked), as opposed to a bug?"""
    if isinstance(error, sa_exc.InvalidatePoolError | sa_exc.DisconnectionError):
        return True
    if isinstance(error, sa_exc.TimeoutError):  # QueuePool: no connection within pool_timeout
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        original = error.orig
        if _psycopg_unavailable(original):
            return True  # connection refused/lost, server shutting down, starting up
        if isinstance(original, sqlite3.OperationalError):
            return any(text in str(original).lower() for text in _SQLITE_BUSY)
        return False
    return _psycopg_unavailable(error)


def _psycopg_unavailable(error: BaseException | None) -> bool:
    # Not imported yet (SQLite, or no connection made): no psycopg error can exist.
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(
        error, psycopg.OperationalError | psycopg.InterfaceError
    )


def database_unavailable_response() -> Response:
    """503 in the envelope, with Retry-After: the client may try again shortly."""
    return error_response(
        503,
        ServiceUnavailable.code,
        "The database is unavailable; try again shortly.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def handle_unexpected(error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    if isinstance(error, AppError):
        return handle_app_error(error)
    if database_unavailable(error):
        # One line, no traceback: an outage would otherwise flood the log with identical ones.
        log.warning("database_unavailable", extra={"error": type(error).__name__})
        return database_unavailable_response()
    # Logged with the traceback for operators; the client sees only the generic envelope.
    log.exception("unhandled_exception")
    return error_response(500, "INTERNAL_ERROR", HTTPStatus.INTERNAL_SERVER_ERROR.phrase + ".")
