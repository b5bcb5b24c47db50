"""Per-request (or per-task) context that lower layers may read without importing Flask.

Two request ids: `request_id_var` is the server's own, made fresh for every request (what logs,
events and tasks are keyed by: a client cannot choose it, so it cannot file its request under
someone else's); `client_request_id_var` is the id the client sent in X-Request-ID, when
well-formed, kept beside it and marked as the client's (echoed in the response header).
"""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
client_request_id_var: ContextVar[str | None] = ContextVar("client_request_id", default=None)


def current_request_id() -> str | None:
    """The server's id of the request (or task's request) being served."""
    return request_id_var.get()


def current_client_request_id() -> str | None:
    """The client's own X-Request-ID of that request, or None when it sent none (or a bad one)."""
    return client_request_id_var.get()
