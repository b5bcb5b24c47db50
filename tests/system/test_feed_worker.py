"""The event feed end to end on the session's backend (the embedded default: SQLite and its own
broker; or PostgreSQL with CELERY_BROKER_URL): API writes -> outbox -> a `flask outbox relay`
process -> the broker -> a Celery worker's `events.feed` -> the feed consumers, each event
counted once although a batch arrives twice."""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery
from flask import Flask
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.feed import DONE, KEY_PREFIX, consumer_name
from app.core.redis_client import get_redis
from app.events.feed import count_by_type
from app.extensions import db
from app.webhooks.fanout import fan_out
from tests.factories import make_account
from tests.support.backends import CACHE_DIR, REDIS_URL
from tests.support.outbox import RelayProcess, committed_events, wait_until
from tests.support.workers import Worker, broker_settings, forget_queue

pytestmark = pytest.mark.slow


def worker_counter(metrics_dir: Path, name: str, label: str) -> Counter[str]:
    """Counter `name` by `label`, from the worker's metric files."""
    files = glob.glob(os.path.join(metrics_dir, "**", "*.db"), recursive=True)
    totals: Counter[str] = Counter()
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for sample in family.samples:
            if sample.name == name:
                totals[sample.labels[label]] += int(sample.value)
    return totals


def marks(app: Flask, event_ids: list[str]) -> list[object]:
    keys = [f"{KEY_PREFIX}:{consumer_name(count_by_type)}:{event_id}" for event_id in event_ids]
    client = get_redis(REDIS_URL)
    if client is not None:
        return [v.decode() if isinstance(v, bytes) else v for v in client.mget(keys)]
    import diskcache

    with diskcache.Cache(os.path.join(CACHE_DIR, "feed-dedupe")) as disk:
        return [disk.get(key) for key in keys]


def test_the_worker_consumes_the_feed_once_per_event(app: Flask, tmp_path: Path) -> None:
    with app.app_context():
        since = int(db.session.scalar(sa.text("SELECT coalesce(max(id), 0) FROM events")) or 0)
        db.session.remove()
    broker = broker_settings(tmp_path)
    queue = f"pbtest-feed-{tmp_path.name[-8:].replace('_', '-')}"
    metrics_dir = tmp_path / "metrics"
    worker = Worker(
        app, tmp_path, broker, OUTBOX_QUEUE=queue, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    )
    relay = RelayProcess(
        app.config["SQLALCHEMY_DATABASE_URI"], broker["CELERY_BROKER_URL"], queue, tmp_path
    )
    try:
        worker.start("--pool=solo", "-Q", queue)
        account = make_account(app.test_client(), app)
        for n in range(3):
            account.post_as(f"Fed {n}")
        relay.start()
        with app.app_context(), db.engine.connect() as conn:
            committed = committed_events(conn, since)
            types = Counter(
                conn.scalars(sa.text("SELECT event_type FROM events WHERE id > :s"), {"s": since})
            )
        ids = [event_id for event_id, _, _ in committed]
        assert types["post.created"] == 3
        wait_until(
            "the worker to consume every event", lambda: marks(app, ids) == [DONE] * len(ids)
        )
        # The same events once more, as a relay that died before acknowledging would send them.
        producer = Celery("feed-probe", broker=broker["CELERY_BROKER_URL"])
        again = [{"id": i, "type": "post.created", "aggregate": {}} for i in ids]
        producer.send_task("events.feed", args=[again], queue=queue)
        name = consumer_name(count_by_type)
        every = Counter({name: len(ids), consumer_name(fan_out): len(ids)})  # each consumer
        wait_until(
            "the worker to skip the repeats",
            lambda: (
                worker_counter(metrics_dir, "postboard_feed_duplicates_total", "consumer") == every
            ),
        )
        # Each event counted once by type, the repeats not at all.
        assert worker_counter(metrics_dir, "postboard_events_total", "type") == types
        consumed = worker_counter(metrics_dir, "postboard_feed_events_consumed_total", "consumer")
        assert consumed == every
        producer.close()
    finally:
        relay.stop()
        worker.stop()
        forget_queue(broker["CELERY_BROKER_URL"], queue)
        print(worker.log()[-3000:])
