"""History: an aggregate's audit trail and its state at any instant, rebuilt from its events.

Replay is a fold: a `<type>.created` event sets the state to its values, every later event
overwrites the fields it changed; each event carries the aggregate's version after it, and
versions go 1, 2, 3, ... with no gap. The state is a dict of representation fields (JSON
values), plus `deleted_at`; a domain renders it (app/users/representation.py, ...). This module
knows no domain.

Replay is bounded by snapshots (table `snapshots`): every EVENTS_SNAPSHOT_EVERY-th event of an
aggregate, the unit of work folds the state at that version and stores it in the same
transaction (`write_due_snapshots`). `state_at(T)` starts from the latest snapshot at or before
T and replays only the events after it (fewer than EVENTS_SNAPSHOT_EVERY). A `horizon` snapshot
(a prune's cut, the baseline of history recorded before events were complete) is a floor: no
replay starts below it, and an instant before it is answered as PRUNED.
See docs/decisions/0017-history-snapshots-in-the-write.md.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app, has_app_context
from sqlalchemy.orm import Session

from app.core.errors import NotFound, Unprocessable
from app.core.events import Event, Snapshot
from app.core.pagination import CursorCodec, Page, PageParams, paginate

DEFAULT_SNAPSHOT_EVERY = 100


def snapshot_every() -> int:
    """Events between two snapshots of one aggregate (EVENTS_SNAPSHOT_EVERY)."""
    if has_app_context():
        return int(current_app.config.get("EVENTS_SNAPSHOT_EVERY", DEFAULT_SNAPSHOT_EVERY))
    return DEFAULT_SNAPSHOT_EVERY


class Outcome(enum.Enum):
    PRESENT = "present"
    DELETED = "deleted"  # soft-deleted at that instant
    NOT_YET = "not_yet"  # before its first event
    PRUNED = "pruned"  # before the history kept (prune horizon, pre-history baseline)


@dataclass(frozen=True)
class Replayed:
    """An aggregate at an instant: the outcome and, when PRESENT, its state and version."""

    outcome: Outcome
    version: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    # PRUNED: the earliest instant that can be answered.
    horizon: datetime | None = None


@dataclass
class Fold:
    """A replay in progress: the state after `version`."""

    version: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None

    def apply(self, event: Event) -> bool:
        """Fold in the next event; False (nothing applied) when it is not the next version."""
        if event.aggregate_version != self.version + 1:
            return False
        values = (event.data or {}).get("values") or {}
        if event.event_type.endswith(".created"):
            self.state = dict(values)
        else:
            self.state.update(values)
        self.version = event.aggregate_version
        self.occurred_at = event.occurred_at
        return True

    def apply_all(self, events: Iterable[Event]) -> Fold:
        for event in events:
            if event.aggregate_version <= self.version:
                continue  # already in the snapshot it started from
            if not self.apply(event):
                break  # a gap: stop at the last state the events fully describe
        return self

    @property
    def deleted(self) -> bool:
        return self.state.get("deleted_at") is not None


def _of(model: type[Event] | type[Snapshot], aggregate_type: str, aggregate_id: uuid.UUID) -> Any:
    return sa.and_(model.aggregate_type == aggregate_type, model.aggregate_id == aggregate_id)


class EventLog:
    """The queries of history: an aggregate's trail, its state at an instant or a version."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def page(
        self,
        aggregate_type: str,
        aggregate_id: uuid.UUID,
        params: PageParams,
        codec: CursorCodec,
    ) -> Page[Event]:
        """One page of the aggregate's events, oldest first (offset or keyset pages)."""
        where = _of(Event, aggregate_type, aggregate_id)
        return paginate(
            self.session,
            sa.select(Event).where(where),
            sort_columns=(Event.occurred_at, Event.id),
            params=params,
            codec=codec,
            scope=f"events:{aggregate_type}:{aggregate_id}",
            count_stmt=sa.select(Event.id).where(where),
            ascending=True,
        )

    def state_at(self, aggregate_type: str, aggregate_id: uuid.UUID, at: datetime) -> Replayed:
        """The aggregate as of `at` (every event that occurred at or before it): one snapshot
        read and fewer than EVENTS_SNAPSHOT_EVERY events, whatever the length of its history."""
        base = self.session.scalar(
            sa.select(Snapshot)
            .where(_of(Snapshot, aggregate_type, aggregate_id), Snapshot.occurred_at <= at)
            .order_by(Snapshot.occurred_at.desc(), Snapshot.version.desc())
            .limit(1)
        )
        if base is None:
            floor = self._floor(aggregate_type, aggregate_id)
            if floor is not None:  # `at` is below the history kept
                created = _instant(floor.state.get("created_at"))
                if created is not None and at < created:
                    return Replayed(Outcome.NOT_YET)
                return Replayed(Outcome.PRUNED, horizon=floor.occurred_at)
            fold = Fold()
        else:
            fold = Fold(base.version, dict(base.state), base.occurred_at)
        stmt = sa.select(Event).where(
            _of(Event, aggregate_type, aggregate_id),
            Event.aggregate_version > fold.version,
            Event.occurred_at <= at,
        )
        if fold.occurred_at is not None:  # the time index bounds the range read
            stmt = stmt.where(Event.occurred_at >= fold.occurred_at)
        fold.apply_all(self.session.scalars(stmt.order_by(Event.aggregate_version)))
        if fold.version == 0:
            return Replayed(Outcome.NOT_YET)
        if fold.deleted:
            return Replayed(Outcome.DELETED, fold.version, fold.state)
        return Replayed(Outcome.PRESENT, fold.version, fold.state)

    def fold_to(self, aggregate_type: str, aggregate_id: uuid.UUID, version: int) -> Fold | None:
        """The state right after `version` (from the latest snapshot at or below it), or None
        when the events kept do not reach it without a gap."""
        base = self.session.scalar(
            sa.select(Snapshot)
            .where(_of(Snapshot, aggregate_type, aggregate_id), Snapshot.version <= version)
            .order_by(Snapshot.version.desc())
            .limit(1)
        )
        fold = Fold() if base is None else Fold(base.version, dict(base.state), base.occurred_at)
        if fold.version == version:
            return fold
        stmt = sa.select(Event).where(
            _of(Event, aggregate_type, aggregate_id),
            Event.aggregate_version > fold.version,
            Event.aggregate_version <= version,
        )
        if fold.occurred_at is not None:
            stmt = stmt.where(Event.occurred_at >= fold.occurred_at)
        fold.apply_all(self.session.scalars(stmt.order_by(Event.aggregate_version)))
        return fold if fold.version == version else None

    def _floor(self, aggregate_type: str, aggregate_id: uuid.UUID) -> Snapshot | None:
        """The aggregate's lowest horizon snapshot, if any (no snapshot lies below it)."""
        return self.session.scalar(
            sa.select(Snapshot)
            .where(_of(Snapshot, aggregate_type, aggregate_id), Snapshot.horizon.is_(True))
            .order_by(Snapshot.version)
            .limit(1)
        )


def present(replayed: Replayed, what: str) -> Replayed:
    """The replay when the resource existed then; 404 before it existed or while deleted, 422
    before the history kept (its events were pruned)."""
    if replayed.outcome is Outcome.PRESENT:
        return replayed
    if replayed.outcome is Outcome.PRUNED and replayed.horizon is not None:
        horizon = replayed.horizon.isoformat()
        raise Unprocessable(
            f"The history of this {what} before {horizon} is no longer kept.",
            details=[{"field": "as_of", "message": f"Ask for {horizon} or later."}],
        )
    raise NotFound(f"No such {what} at that time.")


def write_due_snapshots(session: Session, events: Sequence[Mapping[str, Any]]) -> int:
    """In the write's transaction, after its events are inserted: a snapshot for each event
    whose version is a multiple of EVENTS_SNAPSHOT_EVERY. Returns how many were written."""
    every = snapshot_every()
    due = [e for e in events if e["aggregate_version"] % every == 0]
    if not due:
        return 0
    log = EventLog(session)
    rows = []
    for event in due:
        fold = log.fold_to(
            event["aggregate_type"], event["aggregate_id"], event["aggregate_version"]
        )
        if fold is None or fold.occurred_at is None:
            continue  # history with a gap (never in practice): no snapshot rather than a wrong one
        rows.append(
            {
                "aggregate_type": event["aggregate_type"],
                "aggregate_id": event["aggregate_id"],
                "version": fold.version,
                "occurred_at": fold.occurred_at,
                "horizon": False,
                "state": fold.state,
            }
        )
    if rows:
        session.execute(sa.insert(Snapshot), rows)
    return len(rows)


# Instants ---------------------------------------------------------------------------------------

# `2026-11-21T04:12:00 00:00`: a `+` sent unencoded in a query string arrives as a space.
INSTANT_FORMAT = (
    "Expected an ISO 8601 timestamp with a time and a UTC offset, e.g. 2026-11-21T04:12:00Z."
)
_LEAP_SECOND = re.compile(r"(T\d{2}:?\d{2}):?60(?:[.,]\d+)?")
_UNENCODED_PLUS = re.compile(r"^(.*[T ]\d{2}:?\d{2}(?::?\d{2}(?:[.,]\d+)?)?) (\d{2}(?::?\d{2})?)$")


def parse_instant(text: str) -> datetime:
    """An ISO 8601 / RFC 3339 timestamp with a UTC offset (`Z` or `+hh:mm`), as UTC.

    A date alone or a time without an offset is refused (ValueError): which zone was meant
    cannot be known, and a guess would answer for the wrong instant. A `+` that arrived as a
    space (left unencoded in a query string) is read as the `+` it was; RFC 3339's lower-case
    `t`/`z` and leap second (`:60`, read as the last microsecond of that minute) are accepted,
    and an instant beyond what a datetime holds in UTC is clamped to the first or last one."""
    value = text.strip()
    plus = _UNENCODED_PLUS.match(value)
    if plus:
        value = f"{plus.group(1)}+{plus.group(2)}"
    value = _LEAP_SECOND.sub(r"\1:59.999999", value[:10] + value[10:].upper())
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(INSTANT_FORMAT) from None
    offset = parsed.utcoffset()
    if offset is None:
        raise ValueError(INSTANT_FORMAT)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before the first UTC datetime
        return (datetime.min if offset > timedelta(0) else datetime.max).replace(tzinfo=UTC)


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
