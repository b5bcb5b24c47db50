"""The feed's consumer seam: the `events.feed` task runs the app's table of consumers on each
batch, each consumer seeing an event id once (Redis when configured, else the host's disk);
a failing consumer loses nothing; a batch is routed to the feed queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from flask import Flask

from app.core.feed import DONE, FEED_KEY, KEY_PREFIX, consume, consumer_name, dedupe_store
from app.core.metrics import EVENTS_BY_TYPE
from app.events.feed import FEED_HANDLERS, count_by_type
from app.webhooks.fanout import fan_out


def feed_event(event_type: str = "post.created", version: int = 1) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "aggregate": {"type": event_type.split(".")[0], "id": str(uuid.uuid4())},
        "actor_id": None,
        "occurred_at": "2026-12-04T10:00:00+00:00",
        "version": version,
        "changes": {},
        "request_id": "req",
    }


class Recorder:
    """A consumer that keeps what it was given; fails while `failing` is set."""

    def __init__(self, name: str) -> None:
        self.__qualname__ = f"Recorder.{name}"
        self.seen: list[str] = []
        self.failing = False

    def __call__(self, events: Sequence[Mapping[str, Any]]) -> None:
        if self.failing:
            raise RuntimeError("the consumer's target is down")
        self.seen.extend(str(e["id"]) for e in events)


@pytest.fixture
def consumers(app: Flask) -> Iterator[tuple[Recorder, Recorder]]:
    """Two consumers in the app's table: one of every event, one of post.created only."""
    every, created = (
        Recorder(f"every{uuid.uuid4().hex[:6]}"),
        Recorder(f"created{uuid.uuid4().hex[:6]}"),
    )
    saved = app.extensions[FEED_KEY]
    app.extensions[FEED_KEY] = {"*": [every], "post.created": [created]}
    with app.app_context():
        yield every, created
    app.extensions[FEED_KEY] = saved


def test_each_consumer_gets_its_events_once_in_order(consumers: tuple[Recorder, Recorder]) -> None:
    every, created = consumers
    batch = [feed_event("post.created"), feed_event("user.updated"), feed_event("post.created")]
    first = consume(batch, delivery="delivery-1")
    assert every.seen == [e["id"] for e in batch]
    assert created.seen == [batch[0]["id"], batch[2]["id"]]
    assert first.processed == {consumer_name(every): 3, consumer_name(created): 2}
    # The same batch again (a relay re-published it, or the broker re-delivered it).
    again = consume(batch, delivery="delivery-2")
    assert every.seen == [e["id"] for e in batch]
    assert created.seen == [batch[0]["id"], batch[2]["id"]]
    assert again.duplicates == {consumer_name(every): 3, consumer_name(created): 2}
    assert again.busy == 0
    # A batch overlapping the last: only the new event is processed.
    newer = feed_event("post.created", version=2)
    consume([batch[2], newer], delivery="delivery-3")
    assert every.seen[-1] == created.seen[-1] == newer["id"]
    assert len(every.seen) == 4


def test_a_failing_consumer_loses_nothing_and_the_others_are_not_repeated(
    consumers: tuple[Recorder, Recorder],
) -> None:
    every, created = consumers
    batch = [feed_event("post.created"), feed_event("post.created")]
    created.failing = True
    with pytest.raises(RuntimeError):
        consume(batch, delivery="try-1")
    assert every.seen == [e["id"] for e in batch]
    assert created.seen == []
    created.failing = False  # the retry
    consume(batch, delivery="try-2")
    assert created.seen == [e["id"] for e in batch]
    assert len(every.seen) == 2  # done before the failure: not run again


def test_events_another_delivery_is_processing_are_left_for_a_retry(
    consumers: tuple[Recorder, Recorder],
) -> None:
    every, _ = consumers
    busy, free = feed_event("user.updated"), feed_event("user.updated")
    key = f"{KEY_PREFIX}:{consumer_name(every)}:{busy['id']}"
    dedupe_store().claim([key], "pending:other-delivery", 60)
    result = consume([busy, free], delivery="mine")
    assert every.seen == [free["id"]]
    assert result.busy == 1
    # Once the other delivery is done, the retry finds nothing left to do.
    dedupe_store().finish([key], 60)
    assert consume([busy, free], delivery="mine-retry").busy == 0
    assert every.seen == [free["id"]]


def test_the_dedupe_store_claims_atomically(app: Flask) -> None:
    with app.app_context():
        store = dedupe_store()
        key = f"{KEY_PREFIX}:test:{uuid.uuid4()}"
        assert store.claim([key], "pending:a", 60) == [None]
        assert store.claim([key], "pending:b", 60) == ["pending:a"]
        store.finish([key], 60)
        assert store.claim([key], "pending:c", 60) == [DONE]
        store.release([key])
        assert store.claim([key], "pending:d", 60) == [None]


def test_the_feed_task_counts_each_event_type_once(app: Flask) -> None:
    from worker.tasks.feed import feed

    assert FEED_HANDLERS["*"] == [count_by_type, fan_out]
    batch = [feed_event("post.deleted"), feed_event("post.deleted"), feed_event("user.deleted")]
    before = {
        t: EVENTS_BY_TYPE.labels(type=t)._value.get() for t in ("post.deleted", "user.deleted")
    }
    with app.app_context():
        processed = feed.apply(args=[batch]).get()["processed"]
        assert processed == {consumer_name(count_by_type): 3, consumer_name(fan_out): 3}
        feed.apply(args=[batch]).get()  # a duplicate delivery
    after = {t: EVENTS_BY_TYPE.labels(type=t)._value.get() for t in before}
    assert after["post.deleted"] - before["post.deleted"] == 2
    assert after["user.deleted"] - before["user.deleted"] == 1


def test_feed_batches_go_to_the_feed_queue_which_workers_consume_by_default(app: Flask) -> None:
    celery = app.extensions["celery"]
    queue = app.config["OUTBOX_QUEUE"]
    assert celery.amqp.router.route({}, "events.feed")["queue"].name == queue
    assert celery.amqp.router.route({}, "cache.refresh_post")["queue"].name == "celery"
    assert {q.name for q in celery.conf.task_queues} == {"celery", queue}


def test_a_delivery_again_after_its_worker_died_takes_back_its_own_claims(
    consumers: tuple[Recorder, Recorder],
) -> None:
    every, _ = consumers
    event = feed_event("user.updated")
    key = f"{KEY_PREFIX}:{consumer_name(every)}:{event['id']}"
    dedupe_store().claim([key], "pending:task-1", 60)  # the run killed mid-consumer
    result = consume([event], delivery="task-1")  # the broker delivers task-1 again
    assert every.seen == [event["id"]]
    assert result.busy == 0
