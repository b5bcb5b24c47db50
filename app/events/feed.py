"""What consumes the event feed: the one table, event type (or "*") -> consumers.

The outbox relay publishes every committed event, in commit order per aggregate, at least once;
the worker's `events.feed` task hands each batch to `app.core.feed.consume`, which runs these
consumers with deduplication by event id (each consumer sees an event once). Webhooks (issue
#16) are one more entry (`fan_out`); the cache write-through stays on the after-commit table
(app/events/handlers.py): it must follow a write within milliseconds, not a relay's poll.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask

from app.core.feed import FeedConsumer, register_feed_consumers
from app.core.metrics import EVENTS_BY_TYPE
from app.webhooks.fanout import fan_out


def count_by_type(events: Sequence[Mapping[str, Any]]) -> None:
    """`postboard_events_total{type}`: the write rate of each event type, once per event."""
    for event in events:
        EVENTS_BY_TYPE.labels(type=event["type"]).inc()


FEED_HANDLERS: dict[str, list[FeedConsumer]] = {
    # Webhooks: every event, matched against the subscriptions (app/webhooks/fanout.py).
    "*": [count_by_type, fan_out],
}


def init_app(app: Flask) -> None:
    register_feed_consumers(app, FEED_HANDLERS)
