"""The `backfill_runs` table: one row per backfill, its checkpoint and who is running it.

A run *claims* the row (state `running`, its owner, a new `generation`) and moves the checkpoint
forward in the same transaction as each batch, with a compare-and-set on the generation: if
someone else has taken the row over since, the batch rolls back and the run stops. A claim is
refused while another live run holds the row: one whose heartbeat is fresher than the lease, and
whose process, when it ran on this host, still exists. So a process killed with SIGKILL is taken
over at once from the same host, and after `lease_seconds` from anywhere.

Core only (`sa.table`), no ORM: migrations use this module. The DDL is in migration 0003 and, for
the model-vs-DDL check, in `app.backfill.models`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.core.db import UTCDateTime, utcnow

RUNNING, STOPPED, FAILED, DONE = "running", "stopped", "failed", "done"
STATES = (RUNNING, STOPPED, FAILED, DONE)
ERROR_MAX = 2000


runs = sa.table(
    "backfill_runs",
    sa.column("name", sa.String),
    sa.column("state", sa.String),
    sa.column("owner", sa.String),
    sa.column("generation", sa.Integer),
    sa.column("last_key", sa.BigInteger),
    sa.column("rows_done", sa.BigInteger),
    sa.column("batches", sa.BigInteger),
    sa.column("started_at", UTCDateTime()),
    sa.column("heartbeat_at", UTCDateTime()),
    sa.column("finished_at", UTCDateTime()),
    sa.column("error", sa.Text),
)


class AlreadyRunning(RuntimeError):
    """Another live run holds this backfill."""


class LeaseLost(RuntimeError):
    """Someone took this backfill over while we were running it (our lease had expired)."""


@dataclass(frozen=True)
class Checkpoint:
    name: str
    state: str
    owner: str | None
    generation: int
    last_key: int | None
    rows_done: int
    batches: int
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    error: str | None

    def heartbeat_age(self, now: datetime | None = None) -> float:
        return ((now or utcnow()) - self.heartbeat_at).total_seconds()

    def holder_alive(self, lease_seconds: float, now: datetime | None = None) -> bool:
        """True while a live process may still be running this backfill."""
        if self.state != RUNNING or self.heartbeat_age(now) > lease_seconds:
            return False
        return not owner_is_gone(self.owner)


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str | None) -> bool:
    """True when `owner` ran on this host and its process no longer exists."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def load(conn: Connection, name: str) -> Checkpoint | None:
    row = conn.execute(sa.select(runs).where(runs.c.name == name)).mappings().first()
    return Checkpoint(**row) if row is not None else None


def claim(conn: Connection, name: str, *, owner: str, lease_seconds: float) -> Checkpoint:
    """Take the backfill for this run; resume an unfinished checkpoint, or start a fresh walk."""
    with conn.begin():
        now = utcnow()
        current = load(conn, name)
        if current is None:
            values: dict[str, Any] = {
                "name": name,
                "state": RUNNING,
                "owner": owner,
                "generation": 1,
                "last_key": None,
                "rows_done": 0,
                "batches": 0,
                "started_at": now,
                "heartbeat_at": now,
                "finished_at": None,
                "error": None,
            }
            try:
                conn.execute(sa.insert(runs).values(**values))
            except sa.exc.IntegrityError:
                raise AlreadyRunning(f"backfill {name} was just claimed by another run") from None
            return Checkpoint(**values)
        if current.holder_alive(lease_seconds, now):
            raise AlreadyRunning(
                f"backfill {name} is already running ({current.owner}, last heartbeat "
                f"{current.heartbeat_age(now):.0f}s ago); wait for it, or for its "
                f"{lease_seconds:.0f}s lease to lapse if that process is gone"
            )
        fresh = current.state == DONE
        values = {
            "state": RUNNING,
            "owner": owner,
            "generation": current.generation + 1,
            "heartbeat_at": now,
            "finished_at": None,
            "error": None,
        }
        if fresh:  # a new walk from the start: the missing-rows query says what is left
            values |= {"last_key": None, "rows_done": 0, "batches": 0, "started_at": now}
        taken = conn.execute(
            sa.update(runs)
            .where(runs.c.name == name, runs.c.generation == current.generation)
            .values(**values)
        )
        if taken.rowcount != 1:
            raise AlreadyRunning(f"backfill {name} was just claimed by another run")
        return Checkpoint(**{**current.__dict__, **values})


def advance(
    conn: Connection, name: str, generation: int, *, last_key: int | None, rows: int
) -> None:
    """Move the checkpoint, inside the batch's own transaction (raises LeaseLost if taken over)."""
    moved = conn.execute(
        sa.update(runs)
        .where(runs.c.name == name, runs.c.generation == generation)
        .values(
            last_key=last_key,
            rows_done=runs.c.rows_done + rows,
            batches=runs.c.batches + 1,
            heartbeat_at=utcnow(),
        )
    )
    if moved.rowcount != 1:
        raise LeaseLost(f"backfill {name} was taken over by another run; this one stops")


def release(
    conn: Connection, name: str, generation: int, *, state: str, error: str | None = None
) -> None:
    """End this run's hold: `done`, `stopped` (resume later) or `failed` (resume after a fix)."""
    with conn.begin():
        conn.execute(
            sa.update(runs)
            .where(runs.c.name == name, runs.c.generation == generation)
            .values(
                state=state,
                heartbeat_at=utcnow(),
                finished_at=utcnow() if state == DONE else None,
                error=error[:ERROR_MAX] if error else None,
            )
        )
