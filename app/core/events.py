"""The append-only event log (one row per write, in the write's own transaction), the snapshots
that bound its replay, and the one JSON form of an event (`event_json`: what the audit trail
serves and the outbox publishes), plus the in-memory `DomainEvent` the unit of work hands to the
after-commit handlers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, utcnow

# What `changes` shows for a secret field that changed (a password): its name, never a value.
REDACTED = "[redacted]"


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
    # The write's own timestamp (the `updated_at` it set), so `as_of=<updated_at>` finds it.
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The server's id of the request that wrote it; the client's X-Request-ID, if any, beside it
    # (a client may send any id, even another's: it never stands for the server's).
    request_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    client_request_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    # {"fields": [names changed], "values": {name: new value}}; secrets appear by name only.
    # `values` holds every representation field the write changed (timestamps included), so
    # the events alone rebuild the resource (app/core/history.py).
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)

    __table_args__ = (
        # An aggregate's trail, oldest first (keyset on (occurred_at, id)); replay ranges.
        sa.Index("ix_events_aggregate_time", "aggregate_type", "aggregate_id", "occurred_at", "id"),
    )


class Snapshot(Base):
    """An aggregate's folded state at one version: derived data, rebuilt from events, so it may
    be written, replaced or deleted at will. `horizon` marks a state below which the events are
    gone or incomplete (a prune's cut, a pre-history baseline): no replay starts under it."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    aggregate_type: Mapped[str] = mapped_column(sa.String(32))
    aggregate_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid())
    version: Mapped[int] = mapped_column(sa.Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    horizon: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    state: Mapped[dict[str, Any]] = mapped_column(sa.JSON)

    __table_args__ = (
        sa.Index(
            "uq_snapshots_aggregate_version",
            "aggregate_type",
            "aggregate_id",
            "version",
            unique=True,
        ),
        sa.Index("ix_snapshots_aggregate_time", "aggregate_type", "aggregate_id", "occurred_at"),
    )


class EventsPruneGate(Base):
    """The one way past the append-only guard: while a row here is visible to a transaction (on
    PostgreSQL: inserted by that very transaction), the guard lets it delete events older than
    `older_than`. `flask events prune` inserts it and deletes it again before committing."""

    __tablename__ = "events_prune_gate"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    older_than: Mapped[datetime] = mapped_column(UTCDateTime())
    # PostgreSQL's txid_current() of the pruning transaction (NULL on SQLite: one writer at a time).
    txid: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)


def event_json(row: Event | Mapping[str, Any]) -> dict[str, Any]:
    """An event as the contract shows it (§8): id, type, aggregate, actor_id, occurred_at,
    version, changes (field -> new value; a secret by name only) and the server's request_id.

    Takes a stored row or the column mapping the unit of work inserts (the outbox relay may
    publish either)."""
    get = row.get if isinstance(row, Mapping) else lambda name: getattr(row, name)
    data = get("data") or {}
    changes = dict(data.get("values") or {})
    for name in data.get("fields") or ():
        changes.setdefault(name, REDACTED)
    actor = get("actor_id")
    occurred = get("occurred_at")
    return {
        "id": str(get("event_id")),
        "type": get("event_type"),
        "aggregate": {"type": get("aggregate_type"), "id": str(get("aggregate_id"))},
        "actor_id": str(actor) if actor is not None else None,
        "occurred_at": occurred.isoformat() if occurred is not None else None,
        "version": get("aggregate_version"),
        "changes": changes,
        "request_id": get("request_id"),
    }


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
