"""The outbox backlog for /metrics, read from the database at scrape time: how many events wait
for a relay and how old the oldest is (the feed's lag). The relays' own counters (published,
failures) come from their metric files like the Celery workers' (app/core/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.engine import Engine

from app.core.outbox import PENDING_COUNT_CAP, oldest_pending_age, pending_count

READ_TIMEOUT_SECONDS = 1.0  # a scrape never waits longer than this for the database
# One reader thread: a read stuck on a dead database makes the next scrapes time out at once
# instead of piling up threads.
_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-metrics")


def read_backlog(engine: Engine) -> tuple[int, float]:
    with engine.connect() as conn:
        return pending_count(conn), oldest_pending_age(conn)


class OutboxBacklogCollector:
    """`postboard_outbox_pending` and `postboard_outbox_oldest_pending_seconds`; absent (not a
    made-up 0) when the database does not answer in time."""

    def collect(self) -> Iterator[Metric]:
        try:
            from app.extensions import db

            engine = db.engine  # resolved in the scraping request's app context
            pending, age = _reader.submit(read_backlog, engine).result(READ_TIMEOUT_SECONDS)
        except (FutureTimeout, Exception):  # any failure: the rest of the scrape still answers
            return
        yield GaugeMetricFamily(
            "postboard_outbox_pending",
            f"Events waiting in the outbox for a relay (counted up to {PENDING_COUNT_CAP}).",
            value=pending,
        )
        yield GaugeMetricFamily(
            "postboard_outbox_oldest_pending_seconds",
            "Age of the oldest event waiting in the outbox (0 when none waits): the feed's lag.",
            value=age,
        )
