"""Unit of work: one transaction, the events it appends, and what runs after it commits."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.core.context import current_request_id
from app.core.errors import Conflict
from app.events.models import Event

log = logging.getLogger(__name__)

# Unique indexes that a client can collide with, and the field each one protects.
UNIQUE_FIELDS = {
    "uq_users_email_live": "email",
    "uq_users_username_live": "username",
}


class UnitOfWork:
    """Use as `with UnitOfWork(session, actor_id=...) as uow:`; commits on success.

    Every write inside it calls `record()`, so each change and its event land in one commit
    (no write without its event, no event without its write). `after_commit` callbacks run only
    once the commit succeeded: a task is never enqueued for a write that rolled back.
    """

    def __init__(self, session: Session, *, actor_id: uuid.UUID | None = None) -> None:
        self.session = session
        self.actor_id = actor_id
        self._events: list[dict[str, Any]] = []
        self._after_commit: list[Callable[[], object]] = []

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.session.rollback()
            # A flush inside the block (e.g. to get an id) can hit the same unique indexes and
            # version checks as the commit: the client gets the same 409, never a 500.
            conflict = _conflict(exc)
            if conflict is not None:
                raise conflict from None
            return
        self.commit()

    def record(
        self,
        event_type: str,
        *,
        aggregate_type: str,
        aggregate_id: uuid.UUID,
        version: int,
        values: dict[str, Any] | None = None,
        secret_fields: Iterable[str] = (),
    ) -> None:
        """Queue an event row for this transaction. Secret fields are named, never stored."""
        values = {k: _jsonable(v) for k, v in (values or {}).items()}
        fields = sorted({*values, *secret_fields})
        self._events.append(
            {
                "event_type": event_type,
                "aggregate_type": aggregate_type,
                "aggregate_id": aggregate_id,
                "aggregate_version": version,
                "actor_id": self.actor_id,
                "request_id": current_request_id(),
                "data": {"fields": fields, "values": values},
            }
        )

    def after_commit(self, callback: Callable[[], object]) -> None:
        self._after_commit.append(callback)

    def commit(self) -> None:
        try:
            self.session.flush()
            if self._events:
                self.session.execute(insert(Event), self._events)
            self.session.commit()
        except (IntegrityError, StaleDataError) as exc:
            self.session.rollback()
            conflict = _conflict(exc)
            if conflict is None:
                raise
            raise conflict from None
        except BaseException:
            self.session.rollback()
            raise
        self._events.clear()
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the write is committed; a failed follow-up must not undo the reply
                log.exception("after_commit_failed")


def _conflict(exc: BaseException | None) -> Conflict | None:
    """The 409 for a unique-index or version clash; None for any other error."""
    if isinstance(exc, StaleDataError):
        return Conflict("The resource was changed by another request; read it and retry.")
    field = _violated_field(exc) if isinstance(exc, IntegrityError) else None
    if field is None:
        return None
    return Conflict(
        f"That {field} is already taken.",
        details=[{"field": field, "message": f"That {field} is already taken."}],
    )


def _violated_field(exc: IntegrityError) -> str | None:
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    name = getattr(diag, "constraint_name", None) if diag is not None else None
    text = str(orig)
    for index, field in UNIQUE_FIELDS.items():
        if name == index or index in text:
            return field
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
