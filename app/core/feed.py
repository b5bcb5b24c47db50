"""Consuming the event feed: the seam every feed consumer (metrics now, webhooks next) plugs into.

The outbox relay publishes committed events as `events.feed` task messages, each an ordered
batch of event JSONs (app/core/events.py `event_json`), on the feed queue; a worker runs
`consume` on each batch. The app registers one table, event type (or "*") -> consumers
(app/events/feed.py `FEED_HANDLERS`); the machinery here knows no domain.

Delivery is at least once (a relay re-publishes what it had not acknowledged when it died; a
broker re-delivers a task whose worker died), so each consumer sees each event id once through
a dedupe store: Redis (`SET NX` with a TTL) when REDIS_URL is set, else a disk cache shared by
the host's processes (the embedded default). Per consumer and event:

- **claim** `pending:<delivery>` for FEED_CLAIM_SECONDS (above a task's time limit) before it runs;
- **done** for FEED_DEDUPE_SECONDS once the consumer returned: later copies are skipped;
- a consumer that raises has its claims removed, and the task retries: nothing is lost;
- a worker killed mid-consumer leaves its claims: the task delivered again (same task id) takes
  them back at once; any other delivery waits for them to expire, then runs them (at least once:
  a consumer must tolerate a repeat after a crash, as a webhook receiver does).

A consumer gets its fresh events in feed order, which is commit order per aggregate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from flask import Flask, current_app

from app.core.metrics import FEED_CONSUMED, FEED_DUPLICATES

# A consumer: called with its events of one batch that it has not processed before, in order.
FeedConsumer = Callable[[Sequence[Mapping[str, Any]]], object]
FeedTable = Mapping[str, Sequence[FeedConsumer]]  # event type, or "*" for every type
FEED_KEY = "feed_consumers"
KEY_PREFIX = "postboard:feed"
DONE = "done"
FEED_CLAIM_SECONDS = 300  # the Celery task_time_limit: a claim outlives any run that holds it


def register_feed_consumers(app: Flask, table: FeedTable) -> None:
    """The app's table of event type -> feed consumers."""
    app.extensions[FEED_KEY] = table


def consumer_name(consumer: FeedConsumer) -> str:
    return f"{consumer.__module__}.{getattr(consumer, '__qualname__', type(consumer).__name__)}"


class DedupeStore(Protocol):
    def claim(self, keys: Sequence[str], owner: str, ttl: int) -> list[str | None]:
        """Set each absent key to `owner`; per key, None when set, else its current value."""

    def finish(self, keys: Sequence[str], ttl: int) -> None:
        """Mark the keys done for `ttl` seconds."""

    def release(self, keys: Sequence[str]) -> None:
        """Forget the keys (a failed run: the retry claims them again)."""

    def peek(self, keys: Sequence[str]) -> list[str | None]:
        """Each key's value (DONE, a pending claim) or None, changing nothing."""


class RedisDedupe:
    def __init__(self, client: Any) -> None:
        self.client = client

    def claim(self, keys: Sequence[str], owner: str, ttl: int) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, owner, nx=True, ex=ttl)
            pipe.get(key)
        replies = pipe.execute()
        found: list[str | None] = []
        for was_set, value in zip(replies[::2], replies[1::2], strict=True):
            text = value.decode() if isinstance(value, bytes) else value
            found.append(None if was_set else text)
        return found

    def finish(self, keys: Sequence[str], ttl: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, DONE, ex=ttl)
        pipe.execute()

    def release(self, keys: Sequence[str]) -> None:
        if keys:
            self.client.delete(*keys)

    def peek(self, keys: Sequence[str]) -> list[str | None]:
        values = self.client.mget(list(keys)) if keys else []
        return [v.decode() if isinstance(v, bytes) else v for v in values]


class DiskDedupe:
    """The embedded default's store: diskcache's `add` is an atomic insert-if-absent across the
    host's processes (SQLite underneath), and expired entries count as absent."""

    def __init__(self, directory: str) -> None:
        import diskcache

        self.cache = diskcache.Cache(directory)

    def claim(self, keys: Sequence[str], owner: str, ttl: int) -> list[str | None]:
        found: list[str | None] = []
        with self.cache.transact():
            for key in keys:
                added = self.cache.add(key, owner, expire=ttl)
                found.append(None if added else self.cache.get(key))
        return found

    def finish(self, keys: Sequence[str], ttl: int) -> None:
        with self.cache.transact():
            for key in keys:
                self.cache.set(key, DONE, expire=ttl)

    def release(self, keys: Sequence[str]) -> None:
        with self.cache.transact():
            for key in keys:
                self.cache.delete(key)

    def peek(self, keys: Sequence[str]) -> list[str | None]:
        return [self.cache.get(key) for key in keys]


_disk_stores: dict[str, DiskDedupe] = {}


def dedupe_store() -> DedupeStore:
    """Redis when configured (every worker on every host shares it), else the host's disk."""
    from app.core.redis_client import get_redis

    client = get_redis(current_app.config.get("REDIS_URL"))
    if client is not None:
        return RedisDedupe(client)
    directory = os.path.join(current_app.config["CACHE_DIR"], "feed-dedupe")
    if directory not in _disk_stores:
        _disk_stores[directory] = DiskDedupe(directory)
    return _disk_stores[directory]


@dataclass
class Consumed:
    """What `consume` did with one batch."""

    processed: dict[str, int] = field(default_factory=dict)  # consumer -> fresh events run
    duplicates: dict[str, int] = field(default_factory=dict)  # consumer -> already done
    busy: int = 0  # events another delivery is processing now: look again later


def consume(events: Sequence[Mapping[str, Any]], *, delivery: str) -> Consumed:
    """Run each consumer of the app's table on its events of this batch that it has not
    processed before; raise what a consumer raised (after releasing its claims)."""
    table: FeedTable = current_app.extensions.get(FEED_KEY, {})
    store = dedupe_store()
    dedupe_ttl = int(current_app.config["FEED_DEDUPE_SECONDS"])
    result = Consumed()
    for consumer in _consumers(table):
        name = consumer_name(consumer)
        every = consumer in table.get("*", ())
        mine = [e for e in events if every or consumer in table.get(e["type"], ())]
        if not mine:
            continue
        keys = [f"{KEY_PREFIX}:{name}:{event['id']}" for event in mine]
        owner = f"pending:{delivery}"
        # A claim already held under this delivery's own id is ours: the broker delivered the
        # task again after its worker died mid-run (Celery keeps the task id).
        found = [
            None if held == owner else held for held in store.claim(keys, owner, FEED_CLAIM_SECONDS)
        ]
        fresh = [event for event, held in zip(mine, found, strict=True) if held is None]
        claimed = [key for key, held in zip(keys, found, strict=True) if held is None]
        result.duplicates[name] = sum(1 for held in found if held == DONE)
        result.busy += sum(1 for held in found if held is not None and held != DONE)
        if fresh:
            try:
                consumer(fresh)
            except BaseException:
                store.release(claimed)
                raise
            store.finish(claimed, dedupe_ttl)
        result.processed[name] = len(fresh)
        if fresh:
            FEED_CONSUMED.labels(consumer=name).inc(len(fresh))
        if result.duplicates[name]:
            FEED_DUPLICATES.labels(consumer=name).inc(result.duplicates[name])
    return result


def processed(consumer: FeedConsumer, event_ids: Sequence[str]) -> list[bool]:
    """Per event id, whether `consumer` has finished it (within FEED_DEDUPE_SECONDS): a
    consumer's effects are committed before its done mark is set."""
    keys = [f"{KEY_PREFIX}:{consumer_name(consumer)}:{event_id}" for event_id in event_ids]
    return [value == DONE for value in dedupe_store().peek(keys)]


def _consumers(table: FeedTable) -> list[FeedConsumer]:
    """Every consumer of the table once, in the table's order."""
    seen: list[FeedConsumer] = []
    for consumers in table.values():
        seen.extend(c for c in consumers if c not in seen)
    return seen
