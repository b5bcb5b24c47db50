"""The outbox relay as deployed: `flask outbox relay` processes on PostgreSQL, publishing to a real
broker (Redis; RabbitMQ too when one answers), while the API keeps writing.

- `kill -9` of a relay in the middle of a batch (some of its messages published, none
  acknowledged): nothing is lost, per aggregate the first copies come in commit order, and the
  only repeats are events the killed relay had published but not acknowledged.
- Two relays at once: every event published exactly once, in order per aggregate, both working.
- End to end with a worker: the feed consumer counts each event once, though a batch is
  published twice (on whatever backend and broker the session uses).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from app.core.events import Event
from app.core.outbox import Outbox, shard_of
from app.extensions import db
from tests.factories import make_account
from tests.support.backends import ON_POSTGRES
from tests.support.outbox import (
    AMQP_URL,
    FeedQueue,
    RelayProcess,
    check_feed,
    committed_events,
    rabbitmq_reachable,
    redis_broker_url,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(
        not ON_POSTGRES,
        reason="the relay drills run on PostgreSQL: set DATABASE_URL=postgresql+psycopg://...",
    ),
]

MESSAGES_PER_BATCH = 10  # OUTBOX_BATCH_SIZE 1000 / 100 events a message
BACKLOG_AGGREGATES = 200
BACKLOG_ROUNDS = 60  # 12,000 events waiting when the relays start


def brokers() -> list[object]:
    redis_url = redis_broker_url()
    return [
        pytest.param(
            redis_url,
            id="redis",
            marks=pytest.mark.skipif(not redis_url, reason="needs Redis: set REDIS_URL"),
        ),
        pytest.param(
            AMQP_URL,
            id="rabbitmq",
            marks=pytest.mark.skipif(
                not rabbitmq_reachable(), reason=f"no RabbitMQ answers at {AMQP_URL}"
            ),
        ),
    ]


@pytest.fixture
def feed_queue(request: pytest.FixtureRequest) -> Iterator[FeedQueue]:
    queue = FeedQueue(request.param)
    try:
        yield queue
    finally:
        queue.delete()


def last_event_id(app: Flask) -> int:
    with app.app_context():
        value = db.session.scalar(sa.select(sa.func.coalesce(sa.func.max(Event.id), 0)))
        db.session.remove()
    return int(value or 0)


def add_backlog(app: Flask) -> None:
    """Events of BACKLOG_AGGREGATES aggregates, BACKLOG_ROUNDS versions each, interleaved, with
    their outbox rows, as the unit of work writes them (one transaction per round)."""
    aggregates = [uuid.uuid4() for _ in range(BACKLOG_AGGREGATES)]
    with app.app_context(), db.engine.begin() as conn:
        for version in range(1, BACKLOG_ROUNDS + 1):
            events = [
                {
                    "event_id": uuid.uuid4(),
                    "event_type": "post.updated",
                    "aggregate_type": "post",
                    "aggregate_id": aggregate,
                    "aggregate_version": version,
                    "occurred_at": datetime.now(UTC),
                    "request_id": "drill",
                    "data": {"fields": ["title"], "values": {"title": f"v{version}"}},
                }
                for aggregate in aggregates
            ]
            conn.execute(sa.insert(Event), events)
            conn.execute(
                sa.insert(Outbox),
                [{"event_id": e["event_id"], "shard": shard_of(e["aggregate_id"])} for e in events],
            )


class Writers:
    """Threads editing posts through the API while the relays run (live commits interleaving
    with the relays' reads, several writers per post: some get 409, each success an event)."""

    def __init__(self, app: Flask, threads: int = 3, posts: int = 8) -> None:
        client = app.test_client()
        self.account = make_account(client, app)
        self.posts = [self.account.post_as(f"Drill {i}")["id"] for i in range(posts)]
        self.stop = threading.Event()
        self.app = app
        self.threads = [threading.Thread(target=self._write, args=(n,)) for n in range(threads)]
        self.writes = 0

    def _write(self, n: int) -> None:
        client = self.app.test_client()
        i = n
        while not self.stop.is_set():
            post = self.posts[i % len(self.posts)]
            response = client.patch(
                f"/api/posts/{post}", json={"title": f"edit {i}"}, headers=self.account.headers
            )
            assert response.status_code in (200, 409), response.json
            self.writes += response.status_code == 200
            i += 1

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def part_way(queue: FeedQueue, start: int) -> Callable[[], bool]:
    """True once the messages published since `start` are not a whole number of batches."""

    def check() -> bool:
        published = queue.count() - start
        return published > 0 and published % MESSAGES_PER_BATCH != 0

    return check


def outbox_ids(app: Flask) -> set[str]:
    with app.app_context():
        ids = {str(i) for i in db.session.scalars(sa.select(Outbox.event_id))}
        db.session.remove()
    return ids


@pytest.mark.parametrize("feed_queue", brokers(), indirect=True)
def test_kill_9_mid_batch_loses_nothing_and_reorders_nothing(
    app: Flask, feed_queue: FeedQueue, tmp_path: Path
) -> None:
    since = last_event_id(app)
    add_backlog(app)
    database = app.config["SQLALCHEMY_DATABASE_URI"]
    relay_env = {"OUTBOX_BATCH_SIZE": str(MESSAGES_PER_BATCH * 100)}
    with Writers(app) as writers:
        # Kill the relay once it has published part of a batch: a message count that is not a
        # whole number of batches. A kill can still land just after an acknowledgement; then
        # the next relay is killed the same way (the drill needs one kill mid-batch).
        killed_mid_batch = 0
        for _attempt in range(3):
            relay = RelayProcess(
                database, feed_queue.broker_url, feed_queue.name, tmp_path, **relay_env
            )
            relay.start()
            wait_until(
                "a relay to be part-way through a batch",
                part_way(feed_queue, feed_queue.count()),
                every=0.001,
            )
            relay.kill9()
            published_unacked = outbox_ids(app) & {e["id"] for e in feed_queue.events()}
            if published_unacked:
                killed_mid_batch += 1
                break
        assert killed_mid_batch, "no kill landed between a publish and its acknowledgement"
        # Another relay takes over once the dead one's leases (2 s) run out.
        survivor = RelayProcess(database, feed_queue.broker_url, feed_queue.name, tmp_path)
        survivor.start()
        wait_until("the writers to write", lambda: writers.writes >= 20)
    wait_until("the outbox to drain", lambda: not outbox_ids(app), timeout=120, every=0.2)
    assert survivor.stop() == 0, survivor.log()[-2000:]
    with app.app_context(), db.engine.connect() as conn:
        committed = committed_events(conn, since)
    copies = check_feed(feed_queue.events(), committed)
    repeated = {event_id for event_id, n in copies.items() if n > 1}
    # The only repeats: what the killed relay published and had not acknowledged.
    assert repeated, "the unacknowledged tail was not published again"
    assert repeated <= published_unacked
    assert max(copies.values()) == 2


@pytest.mark.parametrize("feed_queue", brokers()[:1], indirect=True)
def test_two_relays_at_once_publish_everything_once_in_order(
    app: Flask, feed_queue: FeedQueue, tmp_path: Path
) -> None:
    since = last_event_id(app)
    add_backlog(app)
    database = app.config["SQLALCHEMY_DATABASE_URI"]
    relays = [
        RelayProcess(
            database, feed_queue.broker_url, feed_queue.name, tmp_path, OUTBOX_BATCH_SIZE="200"
        )
        for _ in range(2)
    ]
    with Writers(app) as writers:
        for relay in relays:  # side by side, so both meet the backlog
            relay.launch()
        for relay in relays:
            relay.wait_started()
        wait_until("the writers to write", lambda: writers.writes >= 60)
    wait_until("the outbox to drain", lambda: not outbox_ids(app), timeout=120, every=0.2)
    stopped = [relay.stop() for relay in relays]
    assert stopped == [0, 0], [relay.log()[-2000:] for relay in relays]
    with app.app_context(), db.engine.connect() as conn:
        committed = committed_events(conn, since)
    copies = check_feed(feed_queue.events(), committed)
    assert set(copies.values()) == {1}, "an event was published twice without any failure"
    shares = [relay.published_total() for relay in relays]
    assert sum(shares) == len(committed)
    assert min(shares) > 0, f"one relay did all the work: {shares}"
