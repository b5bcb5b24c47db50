"""GraphQL errors in the contract's terms: every error carries `extensions.code` (REST's codes)
and, where there are any, `extensions.details` shaped like REST's `details`.

The same mapping as app/core/errors.py: a domain error keeps its code, message and details; a
document that does not parse or validate is VALIDATION_ERROR; an unreachable database is
SERVICE_UNAVAILABLE; anything else is INTERNAL_ERROR with a generic message (logged with its
traceback for operators, never shown: no stack trace or SQL leaves the server).
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError

from app.core.errors import AppError, Forbidden, database_unavailable, envelope, forbidden_event

log = logging.getLogger(__name__)

INTERNAL = ("INTERNAL_ERROR", "An unexpected error occurred.")
UNAVAILABLE = ("SERVICE_UNAVAILABLE", "The database is unavailable; try again shortly.")


def classify(error: GraphQLError) -> tuple[str, str, list[dict[str, str]], AppError | None]:
    """(code, message, details, the domain error if it was one) of one GraphQL error."""
    original = error.original_error
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    if isinstance(original, AppError):
        return original.code, original.message, original.details, original
    if original is None or isinstance(original, GraphQLError):
        if error.path is None:  # the document or its variables: graphql-core's own words
            return "VALIDATION_ERROR", error.message, [], None
        return (*INTERNAL, [], None)  # a result that broke the schema (null for non-null): a bug
    if database_unavailable(original):
        return (*UNAVAILABLE, [], None)
    return (*INTERNAL, [], None)


def formatted(error: GraphQLError) -> dict[str, Any]:
    """The error as the response shows it: message, locations, path, extensions.code/details."""
    code, message, details, _ = classify(error)
    shown = envelope(code, message, details)["error"]  # details capped and clipped as in REST
    out: dict[str, Any] = {"message": shown["message"]}
    if error.locations:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path is not None:
        out["path"] = list(error.path)
    extensions: dict[str, Any] = {"code": code}
    if "details" in shown:
        extensions["details"] = shown["details"]
    out["extensions"] = extensions
    return out


def from_envelope(error: dict[str, Any]) -> dict[str, Any]:
    """A request refused before GraphQL ran (the pipeline's 413, 415, 429, a 401, a 500...):
    the contract's envelope (§2: every error) and the same error in GraphQL's shape, for GraphQL
    clients (app/core/errors.py renders it with this)."""
    extensions: dict[str, Any] = {"code": error["code"]}
    if "details" in error:
        extensions["details"] = error["details"]
    return {"error": error, "errors": [{"message": error["message"], "extensions": extensions}]}


def report(errors: list[GraphQLError]) -> None:
    """What REST's error handler records, for field errors too: a `forbidden` security event;
    and for operators what clients never see, the traceback of each error that was not ours."""
    for error in errors:
        code, _, _, domain = classify(error)
        if isinstance(domain, Forbidden):
            forbidden_event(domain)
        elif code == "SERVICE_UNAVAILABLE":
            log.warning("database_unavailable", extra={"path": error.path})
        elif code == "INTERNAL_ERROR":
            original = error.original_error or error
            log.error(
                "graphql_unhandled_exception",
                exc_info=(type(original), original, original.__traceback__),
                extra={"path": error.path},
            )
