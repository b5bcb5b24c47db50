"""Celery queue depth for /metrics, read from the broker at scrape time (app/core/metrics.py
registers the collector on each scrape's registry)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

DEFAULT_QUEUE = "celery"
BROKER_TIMEOUT_SECONDS = 1.0  # a scrape never waits longer than this for the broker


# --- Celery queue depth -------------------------------------------------------------------------


class BrokerUnavailable(Exception):
    pass


class QueueDepthCollector:
    """Messages waiting in each Celery queue, read from the broker at scrape time.

    Redis: the length of each queue's list, priority sub-queues included; the queues are the
    default one plus every queue kombu has declared (its `_kombu.binding.*` sets). The embedded
    SQLAlchemy broker: undelivered `kombu_message` rows per declared queue. A broker that does
    not answer within BROKER_TIMEOUT_SECONDS gives `postboard_celery_broker_up 0` and no depth
    series (absent rather than a made-up number); other brokers give neither.
    """

    def __init__(self, broker_url: str, queues: Iterable[str] = ()) -> None:
        self.broker_url = broker_url
        self.queues = tuple(queues)  # reported (0 when empty) even before anything declared them

    def collect(self) -> Iterator[Metric]:
        reader = _depth_reader(self.broker_url)
        if reader is None:
            return
        up = GaugeMetricFamily(
            "postboard_celery_broker_up",
            "1 when the Celery broker answered the last queue-depth read, else 0.",
        )
        try:
            depths = reader(self.broker_url, self.queues)
            for queue in self.queues:
                depths.setdefault(queue, 0)
        except Exception:  # any broker failure: the scrape still answers
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "postboard_celery_queue_depth",
            "Messages waiting in a Celery queue (not yet delivered to a worker), by queue.",
            labels=["queue"],
        )
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield depth


def _depth_reader(broker_url: str) -> Any:
    if broker_url.startswith(("redis://", "rediss://")):
        return redis_queue_depths
    if broker_url.startswith("sqla+"):
        return sqla_queue_depths
    return None


REDIS_SEP = "\x06\x16"  # kombu's separator in binding members and priority queue names
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default priority_steps
_TRANSIENT_QUEUE_SUFFIXES = (".pidbox",)  # remote-control mailboxes, not work queues
_TRANSIENT_QUEUE_PREFIXES = ("celeryev.",)  # event receivers


def _is_work_queue(name: str) -> bool:
    return not name.endswith(_TRANSIENT_QUEUE_SUFFIXES) and not name.startswith(
        _TRANSIENT_QUEUE_PREFIXES
    )


def redis_queue_depths(broker_url: str, known: Iterable[str] = ()) -> dict[str, int]:
    """{queue: waiting messages} on a Redis broker."""
    from app.core.redis_client import get_redis

    client = get_redis(broker_url)  # short socket timeouts
    if client is None:
        raise BrokerUnavailable("no broker URL")
    deadline = time.monotonic() + BROKER_TIMEOUT_SECONDS
    queues = {DEFAULT_QUEUE, *known}
    for key in client.scan_iter(match="_kombu.binding.*", count=500):
        if time.monotonic() > deadline:
            raise BrokerUnavailable("queue discovery took too long")
        for member in client.smembers(key):
            text = member.decode() if isinstance(member, bytes) else str(member)
            queue = text.split(REDIS_SEP)[-1]
            if queue and _is_work_queue(queue):
                queues.add(queue)
    ordered = sorted(queues)
    pipe = client.pipeline(transaction=False)
    for queue in ordered:
        for step in REDIS_PRIORITY_STEPS:
            pipe.llen(f"{queue}{REDIS_SEP}{step}" if step else queue)
    lengths = pipe.execute()
    steps = len(REDIS_PRIORITY_STEPS)
    return {
        queue: int(sum(lengths[i * steps : (i + 1) * steps])) for i, queue in enumerate(ordered)
    }


_engines: dict[str, Any] = {}


def sqla_queue_depths(broker_url: str, known: Iterable[str] = ()) -> dict[str, int]:
    """{queue: undelivered messages} on kombu's SQLAlchemy broker (`sqla+<database url>`)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    url = broker_url.removeprefix("sqla+")
    depths = {DEFAULT_QUEUE: 0}
    database = sa.engine.make_url(url).database
    if url.startswith("sqlite") and database and not os.path.exists(database):
        return depths  # not created yet (nothing published); a scrape must not create it
    engine = _engines.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            connect_args: dict[str, Any] = {"timeout": BROKER_TIMEOUT_SECONDS}
        elif url.startswith("postgresql"):
            connect_args = {"connect_timeout": max(1, int(BROKER_TIMEOUT_SECONDS))}
        else:
            connect_args = {}
        # NullPool: no connection (or SQLite file lock) is held between scrapes.
        engine = _engines[url] = sa.create_engine(
            url, poolclass=NullPool, connect_args=connect_args
        )
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("kombu_queue"):
            return depths  # no worker or producer has used this broker yet
        rows = conn.execute(
            sa.text(
                "SELECT q.name, COUNT(m.id) FROM kombu_queue q "
                "LEFT JOIN kombu_message m ON m.queue_id = q.id AND m.visible = :visible "
                "GROUP BY q.name"
            ),
            {"visible": True},
        )
        for name, count in rows:
            if _is_work_queue(str(name)):
                depths[str(name)] = int(count)
    return depths
