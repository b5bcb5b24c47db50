"""The transactional outbox: one row per event still to be published, written by the unit of work
in the write's own transaction; the relay (app/core/outbox_relay.py) publishes and deletes them.

Events are append-only, so what is not yet published lives here, not as a flag on `events`. The
table holds only the unpublished tail (a relay deletes a row once the broker has its event), so
every relay query is an index probe over a small table whatever the size of the event log.

Each row names its shard, `aggregate_id mod SHARDS`: every event of one aggregate is in one
shard, and a relay holds a shard's lease while it publishes, so one aggregate's events are
published by one relay at a time, in id order. Rows of different aggregates may commit out of
id order; the relay never keeps a cursor, it reads whatever is left, so a late commit is never
skipped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.core.events import Event

# Fixed in code, not a setting: an aggregate must map to the same shard in every process, and
# changing it needs a drained outbox (a migration reseeds `outbox_shards`).
SHARDS = 16


class Outbox(Base):
    __tablename__ = "outbox"

    # Allocated in the write's transaction, after the event's: same-aggregate rows commit in id
    # order (the aggregate's version check serialises its writes).
    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    # The event's public id (events.event_id); no foreign key, so pruning old events is never
    # blocked by the outbox (the relay drops a row whose event is gone).
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid())
    shard: Mapped[int] = mapped_column(sa.SmallInteger)

    __table_args__ = (sa.Index("ix_outbox_shard", "shard", "id"),)


class OutboxShard(Base):
    """One row per shard: which relay holds it, until when (unix seconds; 0 = free)."""

    __tablename__ = "outbox_shards"

    shard: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    lease_until: Mapped[float] = mapped_column(sa.Float, default=0.0)


OUTBOX_INSERT = sa.insert(Outbox.__table__)  # type: ignore[arg-type]  # built once, run per write


def shard_of(aggregate_id: uuid.UUID) -> int:
    return aggregate_id.int % SHARDS


def outbox_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """The outbox row of an event row the unit of work is about to insert."""
    return {"event_id": event["event_id"], "shard": shard_of(event["aggregate_id"])}


# --- What is waiting (for /metrics and `flask outbox status`) ------------------------------------

PENDING_COUNT_CAP = 100_000  # counting stops here: a scrape never walks a huge backlog


def pending_count(conn: Connection, cap: int = PENDING_COUNT_CAP) -> int:
    """Rows waiting to be published, counted up to `cap`."""
    capped = sa.select(Outbox.id).limit(cap).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(capped)).scalar_one())


def oldest_pending_age(conn: Connection) -> float:
    """Seconds since the oldest waiting event occurred (0 when nothing waits): the relay's lag."""
    oldest = conn.execute(
        sa.select(Event.occurred_at)
        .select_from(Outbox)
        .join(Event, Event.event_id == Outbox.event_id)
        .order_by(Outbox.id)
        .limit(1)
    ).scalar()
    return max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0


def shard_leases(conn: Connection) -> list[tuple[int, str | None, float]]:
    """(shard, owner, seconds left) of each shard a relay holds now."""
    now = time.time()
    rows = conn.execute(
        sa.select(OutboxShard.shard, OutboxShard.owner, OutboxShard.lease_until)
        .where(OutboxShard.owner.is_not(None), OutboxShard.lease_until >= now)
        .order_by(OutboxShard.shard)
    )
    return [(int(shard), owner, float(until) - now) for shard, owner, until in rows]


def unpublished_floor(conn: Connection) -> int | None:
    """The highest event id `flask events prune` may delete: just below the oldest event still
    waiting in the outbox (None when nothing waits), so no unpublished event is pruned."""
    oldest = conn.execute(
        sa.select(sa.func.min(Event.id)).join(Outbox, Outbox.event_id == Event.event_id)
    ).scalar()
    return None if oldest is None else int(oldest) - 1
