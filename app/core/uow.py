"""Unit of work: one transaction, the events it appends, and the effects they drive after it
commits.

Each event also gets its outbox row in the same transaction (app/core/outbox.py), from which
the relay publishes the feed; so no write commits without its event and its place in the feed.

Services record what happened (`uow.record("post.updated", ...)`); which effects follow each
event type (cache tombstones, write-through tasks, count generations) is one table the app
registers (`register_event_handlers`, app/events/handlers.py's `EVENT_HANDLERS`). The unit of
work knows no domain: it stores the events and calls the table's handlers after the commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from types import TracebackType
from typing import Any

from flask import Flask, current_app
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from app.core.context import current_client_request_id, current_request_id
from app.core.db import Base, utcnow
from app.core.errors import Conflict
from app.core.events import DomainEvent, Event
from app.core.history import write_due_snapshots
from app.core.outbox import OUTBOX_INSERT, outbox_row

log = logging.getLogger(__name__)

# One effect of an event type: called once per commit with that type's events, in order.
EventHandler = Callable[[Sequence[DomainEvent]], object]
EventHandlers = Mapping[str, Sequence[EventHandler]]
HANDLERS_KEY = "event_handlers"


def register_event_handlers(app: Flask, table: EventHandlers) -> None:
    """The app's table of event type -> after-commit effects."""
    app.extensions[HANDLERS_KEY] = table


@cache
def unique_fields() -> dict[str, str]:
    """Unique index name -> the field a client collides with, declared by the models
    (`sa.Index(..., unique=True, info={"field": "email"})`)."""
    return {
        str(index.name): str(index.info["field"])
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.unique and "field" in index.info
    }


class UnitOfWork:
    """Use as `with UnitOfWork(session, actor_id=...) as uow:`; commits on success.

    Every write inside it calls `record()`, so each change and its event land in one commit
    (no write without its event, no event without its write). The events' handlers run only
    once the commit succeeded: a task is never enqueued for a write that rolled back.
    """

    def __init__(self, session: Session, *, actor_id: uuid.UUID | None = None) -> None:
        self.session = session
        self.actor_id = actor_id
        self._events: list[dict[str, Any]] = []
        self._recorded: list[DomainEvent] = []

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
            self._recorded.clear()  # nothing happened: no effect may follow
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
        refs: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """Queue an event row for this transaction. `values` holds every representation field
        the write changed (timestamps too: the events alone rebuild the resource); secret
        fields are named, never stored; `refs` (related aggregates) go to the handlers only;
        `occurred_at` is the write's own timestamp (the `updated_at` it set)."""
        values = {k: _jsonable(v) for k, v in (values or {}).items()}
        fields = sorted({*values, *secret_fields})
        domain_event = DomainEvent(
            event_type,
            aggregate_id,
            version,
            fields=frozenset(fields),
            values=values,
            refs=dict(refs or {}),
        )
        self._recorded.append(domain_event)
        self._events.append(
            {
                "event_id": domain_event.event_id,
                "event_type": event_type,
                "aggregate_type": aggregate_type,
                "aggregate_id": aggregate_id,
                "aggregate_version": version,
                "actor_id": self.actor_id,
                "occurred_at": occurred_at or utcnow(),
                "request_id": current_request_id(),
                "client_request_id": current_client_request_id(),
                "data": {"fields": fields, "values": values},
            }
        )

    def commit(self) -> None:
        try:
            self.session.flush()
            if self._events:
                self.session.execute(insert(Event), self._events)
                write_due_snapshots(self.session, self._events)  # bounded replay for as_of
                # Same transaction: a committed event is always queued for the feed. A Core
                # insert on the session's connection: half the CPU of the ORM's bulk path.
                rows = [outbox_row(e) for e in self._events]
                self.session.connection().execute(OUTBOX_INSERT, rows)
            self.session.commit()
        except (IntegrityError, StaleDataError) as exc:
            self.session.rollback()
            conflict = _conflict(exc)
            if conflict is None:
                raise
            raise conflict from None
        except BaseException:
            self.session.rollback()
            self._recorded.clear()
            raise
        self._events.clear()
        recorded, self._recorded = self._recorded, []
        dispatch(recorded)


def dispatch(events: Sequence[DomainEvent]) -> None:
    """Run each committed event type's effects, in the table's order, once per type with all of
    its events (one Redis call tombstones a deleted user's thousand posts)."""
    table: EventHandlers = current_app.extensions.get(HANDLERS_KEY, {})
    by_type: dict[str, list[DomainEvent]] = {}
    for event in events:
        by_type.setdefault(event.event_type, []).append(event)
    for event_type, batch in by_type.items():
        for handler in table.get(event_type, ()):
            try:
                handler(batch)
            except Exception:  # the write is committed; a failed follow-up must not undo the reply
                log.exception("event_handler_failed", extra={"event_type": event_type})


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
    for index, field in unique_fields().items():
        if name == index or index in text:
            return field
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
