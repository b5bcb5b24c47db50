"""The outbox relay: publishes committed events to the broker, in commit order per aggregate, at
least once, and removes them from the outbox once the broker has them.

One cycle:

1. **Look** (a read, no lock): which shards have waiting rows and no live lease. Nothing waiting
   is the idle case: one indexed query, no write.
2. **Claim** them (only half, rotating, while a backlog fills whole batches, so that a second
   relay gets the other half) with a conditional UPDATE (free, expired or ours -> ours until
   now + OUTBOX_LEASE_SECONDS), and read up to OUTBOX_BATCH_SIZE of their rows in id order, in
   the same short transaction. Another relay's live lease is never taken, so a shard (and every
   aggregate in it) is published by one relay at a time.
3. **Publish** the events in id order, MESSAGE_EVENTS to a broker message; each message is
   confirmed by the broker before the next is sent.
4. **Acknowledge**: delete the rows of the confirmed messages and free the leases, in one
   transaction. A relay killed between 3 and 4 leaves its rows and its leases: after the lease
   runs out another relay publishes those rows again (at least once; consumers deduplicate by
   event id), in the same order, before anything later of the same aggregates.

No cursor is kept: a lower id that commits late is simply still in the outbox next cycle.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine, Row

from app.core.events import Event, event_json
from app.core.metrics import OUTBOX_PUBLISH_FAILURES, OUTBOX_PUBLISHED
from app.core.outbox import SHARDS, Outbox, OutboxShard

log = logging.getLogger(__name__)

# Events per broker message: one publish costs ~1.5 ms whatever its size, so batching is what
# makes thousands of events a second; a consumer still gets a bounded task.
MESSAGE_EVENTS = 100
# While a backlog fills whole batches a relay claims half the shards a cycle, so a second relay
# always finds some to take; otherwise all it can, so light traffic costs one cycle a poll.
BACKLOG_CLAIM_SHARDS = SHARDS // 2
ERROR_BACKOFF_MAX = 5.0  # seconds between attempts while the database or broker is away
HEARTBEAT_SECONDS = 60.0  # an INFO line with the interval's totals this often

# Publishes one broker message (the ordered events); returns once the broker confirmed it.
Publish = Callable[[list[dict[str, Any]]], None]


def _row_columns(postgres: bool) -> tuple[Any, ...]:
    """The columns `event_json` reads. On PostgreSQL the uuids come as their text (the form
    the JSON carries), sparing a uuid object per column per row; SQLite stores them as hex."""

    def uuid_column(column: Any) -> Any:
        return sa.cast(column, sa.Text).label(column.key) if postgres else column

    return (
        Outbox.id.label("outbox_id"),
        uuid_column(Event.event_id),
        Event.event_type,
        Event.aggregate_type,
        uuid_column(Event.aggregate_id),
        Event.aggregate_version,
        uuid_column(Event.actor_id),
        Event.occurred_at,
        Event.request_id,
        Event.data,
    )


class Stop(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class SignalStop:
    """A stop request a signal handler may set. (`threading.Event.set` takes a lock that the
    interrupted `Event.wait` of the same thread may hold: from a handler it can deadlock.)"""

    SLICE = 0.05  # how soon a sleeping relay notices the request

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def is_set(self) -> bool:
        return self.requested

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, self.SLICE))
        return self.requested


@dataclass(frozen=True)
class Statements:
    """The relay's statements, built once (building SQLAlchemy constructs every cycle costs
    more CPU than running them); values come as parameters."""

    claimable: sa.Select[Any]
    claim: Any
    read: sa.Select[Any]
    delete: Any
    release: Any

    @classmethod
    def for_dialect(cls, dialect: str) -> Statements:
        postgres = dialect == "postgresql"
        shards: sa.BindParameter[Any] = sa.bindparam("shards", expanding=True)
        free = sa.or_(
            OutboxShard.owner.is_(None),
            OutboxShard.lease_until < sa.bindparam("now"),
            OutboxShard.owner == sa.bindparam("me"),
        )
        waiting = sa.exists().where(Outbox.shard == OutboxShard.shard)
        if postgres:  # one array parameter, not a bind per row
            ids = sa.bindparam("ids", type_=postgresql.ARRAY(sa.BigInteger))
            acknowledged = Outbox.id == sa.func.any(ids)
        else:
            acknowledged = Outbox.id.in_(sa.bindparam("ids", expanding=True))
        return cls(
            claimable=sa.select(OutboxShard.shard).where(free, waiting),
            claim=sa.update(OutboxShard)
            .where(OutboxShard.shard.in_(shards), free)
            .values(owner=sa.bindparam("me"), lease_until=sa.bindparam("until"))
            .returning(OutboxShard.shard),
            read=sa.select(*_row_columns(postgres))
            .select_from(Outbox)
            .outerjoin(Event, Event.event_id == Outbox.event_id)
            .where(Outbox.shard.in_(shards))
            .order_by(Outbox.id)
            .limit(sa.bindparam("limit")),
            delete=sa.delete(Outbox).where(acknowledged),
            release=sa.update(OutboxShard)
            .where(OutboxShard.shard.in_(shards), OutboxShard.owner == sa.bindparam("me"))
            .values(owner=None, lease_until=0.0),
        )


@dataclass
class Cycle:
    """What one cycle did."""

    published: int = 0  # events the broker confirmed (and removed from the outbox)
    dropped: int = 0  # rows whose event no longer exists (pruned): removed, not published
    more: bool = False  # rows were left this relay could take at once
    error: BaseException | None = None  # the publish that failed (its rows wait for later)


def default_owner() -> str:
    """This relay's name in the shard leases: host, process, and a nonce (a restarted process
    with a recycled pid must not inherit a dead relay's leases)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:128]


class Relay:
    def __init__(
        self,
        engine: Engine,
        publish: Publish,
        *,
        queue: str = "events",
        batch_size: int = 500,
        lease_seconds: float = 30.0,
        owner: str | None = None,
        message_events: int = MESSAGE_EVENTS,
    ) -> None:
        self.engine = engine
        self.publish = publish
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.owner = owner or default_owner()
        self.message_events = message_events
        self._published = OUTBOX_PUBLISHED.labels(queue=queue)  # metric children, resolved once
        self._failures = OUTBOX_PUBLISH_FAILURES.labels(queue=queue)
        # Where this relay starts rotating through the shards: spreading, not security.
        self._turn = random.randrange(SHARDS)  # noqa: S311  # nosec B311
        self.published_total = 0
        self._backlog = False  # the last cycle read a whole batch
        self._sql = Statements.for_dialect(engine.dialect.name)

    # --- one cycle -------------------------------------------------------------------------------

    def run_once(self) -> Cycle:
        """Claim, publish, acknowledge; the leases are freed whatever happens."""
        now = time.time()
        with self.engine.connect() as conn:  # one connection (one pool checkout) a cycle
            free = self._claimable(conn, now)
            conn.rollback()  # end the read: no snapshot held while publishing
            if not free:
                return Cycle()
            wanted = self._rotate(free, BACKLOG_CLAIM_SHARDS if self._backlog else SHARDS)
            with conn.begin():
                claimed = self._claim(conn, wanted, now)
                rows = self._read(conn, claimed) if claimed else []
            self._backlog = len(rows) >= self.batch_size
            cycle = Cycle(more=len(free) > len(claimed) or self._backlog)
            if not claimed:
                return cycle
            done: list[int] = []
            try:
                self._publish(rows, done, cycle)
            except Exception as exc:  # the broker refused or timed out: the rest waits
                cycle.error = exc
                cycle.more = False
                self._failures.inc()
            finally:
                with conn.begin():
                    self._acknowledge(conn, done, claimed)
        self.published_total += cycle.published
        return cycle

    def _claimable(self, conn: sa.Connection, now: float) -> list[int]:
        """Shards with waiting rows and no live lease but ours (index probes, no lock)."""
        return list(conn.execute(self._sql.claimable, {"now": now, "me": self.owner}).scalars())

    def _rotate(self, shards: Sequence[int], limit: int) -> list[int]:
        """At most `limit` of them, starting at this relay's turn (every shard is served)."""
        self._turn = (self._turn + limit) % SHARDS
        ordered = sorted(shards, key=lambda shard: (shard - self._turn) % SHARDS)
        return ordered[:limit]

    def _claim(self, conn: sa.Connection, shards: Sequence[int], now: float) -> list[int]:
        # Compare-and-set: on PostgreSQL a concurrent claim of the same row waits for ours and
        # re-checks the condition (then fails); SQLite has one writer at a time.
        claimed = conn.execute(
            self._sql.claim,
            {
                "shards": list(shards),
                "now": now,
                "me": self.owner,
                "until": now + self.lease_seconds,
            },
        )
        return sorted(claimed.scalars())

    def _read(self, conn: sa.Connection, shards: Sequence[int]) -> list[Row[Any]]:
        return list(
            conn.execute(self._sql.read, {"shards": list(shards), "limit": self.batch_size})
        )

    def _publish(self, rows: Sequence[Row[Any]], done: list[int], cycle: Cycle) -> None:
        """Publish in id order, a message at a time; `done` collects the confirmed rows."""
        for start in range(0, len(rows), self.message_events):
            chunk = rows[start : start + self.message_events]
            events = [event_json(dict(row._mapping)) for row in chunk if row.event_type is not None]
            if events:
                self.publish(events)
                self._published.inc(len(events))
            dropped = len(chunk) - len(events)
            if dropped:
                log.warning("outbox_event_missing", extra={"rows": dropped})
            cycle.published += len(events)
            cycle.dropped += dropped
            done.extend(row.outbox_id for row in chunk)

    def _acknowledge(self, conn: sa.Connection, done: Sequence[int], shards: Sequence[int]) -> None:
        if done:
            conn.execute(self._sql.delete, {"ids": list(done)})
        conn.execute(self._sql.release, {"shards": list(shards), "me": self.owner})

    # --- the loop --------------------------------------------------------------------------------

    def run(self, stop: Stop, *, poll: float, idle_poll: float) -> None:
        """Cycle until `stop` is set (the cycle under way finishes first). Straight on while
        work is left; `poll` after a cycle that emptied what it could take; idle, the sleep
        doubles up to `idle_poll`; after a failure it doubles up to ERROR_BACKOFF_MAX."""
        delay = 0.0
        interval_started, interval_published = time.monotonic(), 0
        log.info("outbox_relay_started", extra={"owner": self.owner})
        while not stop.is_set():
            try:
                cycle = self.run_once()
            except Exception as exc:  # the database is away: nothing was published unacked
                cycle = Cycle(error=exc)
            interval_published += cycle.published
            if cycle.error is not None:
                log.warning(
                    "outbox_relay_error",
                    extra={"owner": self.owner, "error": type(cycle.error).__name__},
                )
                delay = min(max(idle_poll, ERROR_BACKOFF_MAX), max(poll, delay * 2))
            elif cycle.more:
                delay = 0.0
            elif cycle.published:
                delay = poll
            else:
                delay = min(idle_poll, max(poll, delay * 2))
            if time.monotonic() - interval_started >= HEARTBEAT_SECONDS:
                log.info(
                    "outbox_relay_heartbeat",
                    extra={"owner": self.owner, "published": interval_published},
                )
                interval_started, interval_published = time.monotonic(), 0
            if delay:
                stop.wait(delay)
        log.info(
            "outbox_relay_stopped",
            extra={"owner": self.owner, "published_total": self.published_total},
        )


def relay_engine(url: sa.URL | str, options: dict[str, Any]) -> Engine:
    """The relay's own connection: one (a relay runs one cycle at a time), no ping before each
    use (a dead connection fails one cycle, which backs off and reconnects), and on PostgreSQL
    commits without waiting for the disk: a claim or an acknowledgement lost in a database crash
    only means publishing those events again."""
    skip = ("pool_size", "max_overflow", "pool_pre_ping")
    options = {key: value for key, value in options.items() if key not in skip}
    if sa.make_url(url).get_backend_name() != "postgresql":
        return sa.create_engine(url, **options)
    connect_args = {**options.pop("connect_args", {}), "options": "-c synchronous_commit=off"}
    return sa.create_engine(url, **options, pool_size=1, max_overflow=0, connect_args=connect_args)


# --- publishing through the Celery app ------------------------------------------------------------

# Each message gets a short retry in kombu; past it the relay backs off and tries again later.
RELAY_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5}
_CONFIRMING_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def celery_publisher(celery: Any, queue: str, task: str) -> Publish:
    """Publish a batch as one `task` message on `queue`. On RabbitMQ with publisher confirms, so
    a send returns only once the broker has the message (Redis answers LPUSH after applying it;
    the embedded broker commits a row)."""
    if str(celery.conf.broker_url).startswith(_CONFIRMING_SCHEMES):
        options = dict(celery.conf.broker_transport_options or {})
        celery.conf.broker_transport_options = {**options, "confirm_publish": True}

    def publish(events: list[dict[str, Any]]) -> None:
        celery.send_task(
            task,
            args=[events],
            # Celery would otherwise build a repr of the whole batch for every message.
            argsrepr=f"[{len(events)} events {events[0]['id']}..{events[-1]['id']}]",
            queue=queue,
            ignore_result=True,
            retry=True,
            retry_policy=RELAY_PUBLISH_RETRY,
        )

    return publish
