"""Retention: pruning events older than a date, keeping what history promises.

For every aggregate with events older than the cut, a `horizon` snapshot of its state right
after its last such event is written first (folded from the events, app/core/history.py); then
those events and the snapshots below the horizon are deleted, all in one transaction per batch
of aggregates. `as_of` for any instant from the horizon on answers exactly as before; before it,
the audit trail no longer lists the events and `as_of` says so (422). The append-only guard lets
these deletes through only because each batch's transaction opens the prune gate
(`events_prune_gate`, migration 0009) for events older than the cut, and closes it before it
commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.orm import Session

from app.core.events import Event, EventsPruneGate, Snapshot
from app.core.history import EventLog

FLOOR_KEY = "events_prune_floor"
# Two prunes at once take turns batch by batch (PostgreSQL advisory lock; SQLite has one writer).
_PRUNE_LOCK = 0x7072756E65  # "prune"

Aggregate = tuple[str, uuid.UUID]


def register_prune_floor(app: Flask, floor: Callable[[], int | None]) -> None:
    """Let another part of the system hold events back from pruning: `floor()` returns the
    highest event id that may go (e.g. the outbox relay's last published id), or None."""
    app.extensions[FLOOR_KEY] = floor


@dataclass
class PruneReport:
    events: int = 0  # deleted (or, in a dry run, that would be)
    aggregates: int = 0  # users and posts whose early history went
    snapshots: int = 0  # horizon snapshots written (a dry run: at most this many)
    skipped: int = 0  # aggregates left whole: their events do not fold without a gap


class Pruner:
    """`Pruner(session, older_than, batch=N).run()`; `count()` first for a dry run or a
    progress bar."""

    def __init__(self, session: Session, older_than: datetime, *, batch: int) -> None:
        self.session = session
        self.older_than = older_than
        self.batch = batch
        floor = current_app.extensions.get(FLOOR_KEY)
        self.floor_id: int | None = floor() if floor is not None else None
        self.postgres = session.get_bind().dialect.name == "postgresql"

    def _old(self) -> Any:
        clause = Event.occurred_at < self.older_than
        return clause if self.floor_id is None else sa.and_(clause, Event.id <= self.floor_id)

    def count(self) -> PruneReport:
        """What a run would delete: the events older than the cut, and how many aggregates."""
        events = self.session.scalar(sa.select(sa.func.count()).where(self._old())) or 0
        pairs = sa.select(Event.aggregate_type, Event.aggregate_id).where(self._old()).distinct()
        aggregates = self.session.scalar(sa.select(sa.func.count()).select_from(pairs.subquery()))
        self.session.rollback()
        return PruneReport(events=events, aggregates=aggregates or 0, snapshots=aggregates or 0)

    def run(self, progress: Callable[[int], object] = lambda _n: None) -> PruneReport:
        """Prune batch by batch (one transaction each); `progress(n)` after each, n events."""
        report = PruneReport()
        last_id = 0
        while True:
            rows = self.session.execute(
                sa.select(Event.id, Event.aggregate_type, Event.aggregate_id)
                .where(Event.id > last_id, self._old())
                .order_by(Event.id)
                .limit(self.batch)
            ).all()
            if not rows:
                self.session.rollback()
                return report
            last_id = rows[-1].id
            aggregates = list(dict.fromkeys((r.aggregate_type, r.aggregate_id) for r in rows))
            deleted = self._prune(aggregates, report)
            progress(deleted)

    def _prune(self, aggregates: list[Aggregate], report: PruneReport) -> int:
        """One batch, in one transaction: horizon snapshots, then the deletes."""
        try:
            if self.postgres:
                self.session.execute(sa.select(sa.func.pg_advisory_xact_lock(_PRUNE_LOCK)))
            pruned: list[Aggregate] = []
            written = skipped = 0
            for aggregate, cut in self._cuts(aggregates).items():
                wrote = self._keep_horizon(aggregate, cut)
                if wrote is None:
                    skipped += 1
                else:
                    pruned.append(aggregate)
                    written += wrote
            deleted = self._delete(pruned) if pruned else 0
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise
        report.events += deleted
        report.aggregates += len(pruned)
        report.snapshots += written
        report.skipped += skipped
        return deleted

    def _cuts(self, aggregates: list[Aggregate]) -> dict[Aggregate, int]:
        """Each aggregate's last version older than the cut (still there: not pruned yet)."""
        keys = sa.tuple_(Event.aggregate_type, Event.aggregate_id)
        rows = self.session.execute(
            sa.select(
                Event.aggregate_type, Event.aggregate_id, sa.func.max(Event.aggregate_version)
            )
            .where(keys.in_(aggregates), self._old())
            .group_by(Event.aggregate_type, Event.aggregate_id)
        ).all()
        return {(kind, ident): version for kind, ident, version in rows}

    def _keep_horizon(self, aggregate: Aggregate, cut: int) -> int | None:
        """Make sure a horizon at or above `cut` holds the aggregate's state: how many snapshots
        that wrote (0 or 1), or None when its events cannot be folded up to `cut` (then nothing
        of it is deleted)."""
        kind, ident = aggregate
        of = sa.and_(Snapshot.aggregate_type == kind, Snapshot.aggregate_id == ident)
        floor = self.session.scalar(
            sa.select(sa.func.max(Snapshot.version)).where(of, Snapshot.horizon.is_(True))
        )
        if floor is not None and floor >= cut:
            return 0  # already below a horizon (an earlier prune, the pre-history baseline)
        fold = EventLog(self.session).fold_to(kind, ident, cut)
        if fold is None or fold.occurred_at is None:
            return None
        updated = self.session.execute(
            sa.update(Snapshot).where(of, Snapshot.version == cut).values(horizon=True)
        )
        wrote = 0
        if not getattr(updated, "rowcount", 0):
            wrote = 1
            self.session.execute(
                sa.insert(Snapshot).values(
                    aggregate_type=kind,
                    aggregate_id=ident,
                    version=cut,
                    occurred_at=fold.occurred_at,
                    horizon=True,
                    state=fold.state,
                )
            )
        # Snapshots below the horizon would answer instants it declares no longer kept.
        self.session.execute(sa.delete(Snapshot).where(of, Snapshot.version < cut))
        return wrote

    def _delete(self, aggregates: list[Aggregate]) -> int:
        """Delete the aggregates' events older than the cut through the prune gate."""
        txid = self.session.scalar(sa.select(sa.func.txid_current())) if self.postgres else None
        gate = self.session.scalar(
            sa.insert(EventsPruneGate)
            .values(older_than=self.older_than, txid=txid)
            .returning(EventsPruneGate.id)
        )
        keys = sa.tuple_(Event.aggregate_type, Event.aggregate_id)
        result = self.session.execute(
            sa.delete(Event)
            .where(keys.in_(aggregates), self._old())
            .execution_options(synchronize_session=False)
        )
        self.session.execute(sa.delete(EventsPruneGate).where(EventsPruneGate.id == gate))
        return int(getattr(result, "rowcount", 0) or 0)
