"""The append-only event log: one row per write, written in the write's own transaction."""

from __future__ import annotations

import uuid
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
    event_type: Mapped[str] = mapped_column(sa.String(64))
    aggregate_type: Mapped[str] = mapped_column(sa.String(32))
    aggregate_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid())
    aggregate_version: Mapped[int] = mapped_column(sa.Integer)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid(), default=None)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    request_id: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    # {"fields": [names changed], "values": {name: new value}}; secrets appear by name only.
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)

    __table_args__ = (sa.Index("ix_events_aggregate", "aggregate_type", "aggregate_id", "id"),)
