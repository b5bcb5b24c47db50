"""The append-only event log (one row per write, in the write's own transaction) and the
in-memory `DomainEvent` the unit of work hands to the after-commit handlers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, utcnow


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    # The public id (the contract's event `id`; feed consumers deduplicate by it). The integer
    # key above is the log's internal order.
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), unique=True, default=uuid.uuid4)
    event_type: Mapped[str] = mapped_column(sa.String(64))
    aggregate_type: Mapped[str] = mapped_column(sa.String(32))
    aggregate_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid())
    aggregate_version: Mapped[int] = mapped_column(sa.Integer)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid(), default=None)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The server's id of the request that wrote it; the client's X-Request-ID, if any, beside it
    # (a client may send any id, even another's: it never stands for the server's).
    request_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    client_request_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    # {"fields": [names changed], "values": {name: new value}}; secrets appear by name only.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)

    __table_args__ = (sa.Index("ix_events_aggregate", "aggregate_type", "aggregate_id", "id"),)


@dataclass(frozen=True)
class DomainEvent:
    """What a committed write did, as its after-commit handlers see it."""

    event_type: str
    aggregate_id: uuid.UUID
    version: int
    fields: frozenset[str] = frozenset()
    values: dict[str, Any] = field(default_factory=dict)
    # Related aggregates an effect needs but the stored row does not carry (e.g. a post's
    # author, whose counts change): handed to the handlers, never stored.
    refs: dict[str, Any] = field(default_factory=dict)
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
