"""The relay, in process, with a publisher that records what the broker would have received:
order per aggregate, each event once with its id, nothing lost when a publish fails, leases that
keep two relays off one shard, late commits never skipped, and idle polling that writes nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.core.events import Event
from app.core.outbox import SHARDS, Outbox, OutboxShard, shard_of
from app.core.outbox_relay import Cycle, Relay
from app.extensions import db


class Broker:
    """What a relay published: one list of event JSONs per message, in publish order."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.messages: list[list[dict[str, Any]]] = []
        self.fail_on = fail_on or set()  # message numbers (1-based) the broker refuses
        self.attempts = 0

    def __call__(self, events: list[dict[str, Any]]) -> None:
        self.attempts += 1
        if self.attempts in self.fail_on:
            raise ConnectionError("broker refused the message")
        self.messages.append(events)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for message in self.messages for event in message]


@pytest.fixture
def engine(app: Flask) -> Iterator[sa.Engine]:
    with app.app_context():
        yield db.engine
        db.session.remove()


def add_events(engine: sa.Engine, aggregates: list[uuid.UUID], rounds: int) -> list[uuid.UUID]:
    """`rounds` events for each aggregate (versions 1..rounds), interleaved, each with its
    outbox row; returns the event ids in insertion (commit) order."""
    events, rows = [], []
    for version in range(1, rounds + 1):
        for aggregate in aggregates:
            event_id = uuid.uuid4()
            events.append(
                {
                    "event_id": event_id,
                    "event_type": "post.updated",
                    "aggregate_type": "post",
                    "aggregate_id": aggregate,
                    "aggregate_version": version,
                    "occurred_at": datetime.now(UTC),
                    "request_id": "test",
                    "data": {"fields": ["title"], "values": {"title": f"v{version}"}},
                }
            )
            rows.append({"event_id": event_id, "shard": shard_of(aggregate)})
    with engine.begin() as conn:
        conn.execute(sa.insert(Event), events)
        conn.execute(sa.insert(Outbox), rows)
    return [e["event_id"] for e in events]


def pending(engine: sa.Engine) -> list[uuid.UUID]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Outbox.event_id).order_by(Outbox.id)))


def drain(relay: Relay, limit: int = 100) -> list[Cycle]:
    cycles = []
    for _ in range(limit):
        cycle = relay.run_once()
        cycles.append(cycle)
        if not cycle.more and not cycle.published and cycle.error is None:
            return cycles
    raise AssertionError("the relay never ran out of work")


def versions_by_aggregate(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for event in events:
        seen.setdefault(event["aggregate"]["id"], []).append(event["version"])
    return seen


def test_publishes_each_event_once_in_order_per_aggregate_then_empties_the_outbox(
    engine: sa.Engine,
) -> None:
    aggregates = [uuid.uuid4() for _ in range(40)]
    ids = add_events(engine, aggregates, rounds=5)
    broker = Broker()
    drain(Relay(engine, broker, batch_size=37, message_events=10))
    published = [uuid.UUID(e["id"]) for e in broker.events]
    assert sorted(published) == sorted(ids)
    assert len(published) == len(ids)
    assert all(
        versions == [1, 2, 3, 4, 5] for versions in versions_by_aggregate(broker.events).values()
    )
    assert len(versions_by_aggregate(broker.events)) == 40
    assert all(len(message) <= 10 for message in broker.messages)
    assert pending(engine) == []


def test_a_refused_publish_loses_nothing_and_reorders_nothing(engine: sa.Engine) -> None:
    aggregates = [uuid.uuid4() for _ in range(8)]
    ids = add_events(engine, aggregates, rounds=6)
    broker = Broker(fail_on={2})  # the second message of the first batch is refused
    relay = Relay(engine, broker, batch_size=1000, message_events=5)
    first = relay.run_once()
    assert isinstance(first.error, ConnectionError)
    assert first.published == 5
    # The first message's rows are acknowledged; the rest wait, none lost.
    left = pending(engine)
    assert len(left) == len(ids) - 5
    assert set(left).isdisjoint({uuid.UUID(e["id"]) for e in broker.events})
    with engine.connect() as conn:  # the leases were freed despite the failure
        assert conn.scalar(sa.select(sa.func.count()).where(OutboxShard.owner.is_not(None))) == 0
    drain(relay)
    assert sorted(uuid.UUID(e["id"]) for e in broker.events) == sorted(ids)
    assert all(v == [1, 2, 3, 4, 5, 6] for v in versions_by_aggregate(broker.events).values())


def test_a_live_lease_keeps_other_relays_off_its_shard_until_it_expires(engine: sa.Engine) -> None:
    aggregate = uuid.uuid4()
    add_events(engine, [aggregate], rounds=3)
    shard = shard_of(aggregate)
    with engine.begin() as conn:  # a relay that died holding the shard
        conn.execute(
            sa.update(OutboxShard)
            .where(OutboxShard.shard == shard)
            .values(owner="dead-relay", lease_until=time.time() + 60)
        )
    broker = Broker()
    relay = Relay(engine, broker)
    assert relay.run_once() == Cycle()
    assert broker.messages == []
    assert len(pending(engine)) == 3
    with engine.begin() as conn:  # its lease runs out
        conn.execute(sa.update(OutboxShard).values(lease_until=time.time() - 1))
    drain(relay)
    assert [e["version"] for e in broker.events] == [1, 2, 3]


def test_two_relays_never_hold_one_shard(engine: sa.Engine) -> None:
    """Each claims a share; what one claimed the other cannot, until it is released."""
    add_events(engine, [uuid.uuid4() for _ in range(64)], rounds=1)
    one, two = Relay(engine, Broker(), owner="one"), Relay(engine, Broker(), owner="two")
    now = time.time()
    with engine.begin() as conn:
        mine = one._claim(conn, list(range(SHARDS)), now)
    with engine.begin() as conn:
        theirs = two._claim(conn, list(range(SHARDS)), now)
    assert mine
    assert theirs == []
    with engine.begin() as conn:
        one._acknowledge(conn, [], mine)
        assert two._claim(conn, list(range(SHARDS)), now) == mine


def test_a_lower_id_committed_late_is_still_published(engine: sa.Engine) -> None:
    """No cursor: an id below everything already published is picked up by the next cycle."""
    early, late = uuid.uuid4(), uuid.uuid4()
    add_events(engine, [early], rounds=1)
    with engine.begin() as conn:  # the late row: an id lower than the published one
        low_id = conn.scalar(sa.select(sa.func.min(Outbox.id))) - 1000
    broker = Broker()
    relay = Relay(engine, broker)
    drain(relay)
    late_event = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(Event).values(
                event_id=late_event,
                event_type="post.created",
                aggregate_type="post",
                aggregate_id=late,
                aggregate_version=1,
                occurred_at=datetime.now(UTC),
                data={"fields": [], "values": {}},
            )
        )
        conn.execute(sa.insert(Outbox).values(id=low_id, event_id=late_event, shard=shard_of(late)))
    drain(relay)
    assert [e["id"] for e in broker.events][-1] == str(late_event)


def test_a_row_whose_event_is_gone_is_dropped_not_published(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(Outbox).values(event_id=uuid.uuid4(), shard=3))
    broker = Broker()
    (cycle, *_) = drain(Relay(engine, broker))
    assert (cycle.published, cycle.dropped) == (0, 1)
    assert broker.messages == []
    assert pending(engine) == []


def test_an_idle_poll_is_one_read_and_writes_nothing(engine: sa.Engine) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0].upper())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert Relay(engine, Broker()).run_once() == Cycle()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert [s for s in statements if s != "SELECT"] == []
    assert statements.count("SELECT") == 1


class CountingStop(threading.Event):
    """A stop event that records every sleep the loop asks for and stops it after `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sleeps: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.sleeps.append(float(timeout or 0))
        if len(self.sleeps) >= self.limit:
            self.set()
        return self.is_set()


def test_the_loop_sleeps_longer_while_idle_and_not_at_all_while_work_is_left(
    engine: sa.Engine,
) -> None:
    idle = CountingStop(limit=6)
    Relay(engine, Broker()).run(idle, poll=0.1, idle_poll=1.0)
    assert idle.sleeps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]

    add_events(engine, [uuid.uuid4() for _ in range(32)], rounds=3)
    busy = CountingStop(limit=2)
    broker = Broker()
    Relay(engine, broker, batch_size=10).run(busy, poll=0.1, idle_poll=1.0)
    # Full batches follow one another without a sleep; the first sleep comes once it ran dry.
    assert len(broker.events) == 96
    assert pending(engine) == []
    assert busy.sleeps[0] == 0.1


def test_a_dead_broker_fails_the_cycle_quickly_and_keeps_every_row(
    engine: sa.Engine, make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.outbox_relay import celery_publisher

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # Celery would prefer it to ours

    ids = add_events(engine, [uuid.uuid4() for _ in range(4)], rounds=2)
    dead = make_app(
        CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_RESULT_BACKEND="cache+memory://"
    )
    with dead.app_context():
        publish = celery_publisher(dead.extensions["celery"], "events", "events.feed")
        started = time.monotonic()
        cycle = Relay(engine, publish).run_once()
    assert cycle.error is not None
    assert time.monotonic() - started < 5
    assert sorted(pending(engine)) == sorted(ids)
    with engine.connect() as conn:  # and the shards are free for the next try
        assert conn.scalar(sa.select(sa.func.count()).where(OutboxShard.owner.is_not(None))) == 0
