"""The webhook targets' circuit breakers (one per webhook, state shared by every worker through
Redis or the host's disk cache: app/core/shared_breakers.py), and their states for /metrics.

Keyed by the webhook's public id, not by host: the unit that fails is one subscriber's endpoint
(a 500 from one path of a shared host such as a chat service's hook endpoint must not stop
every other subscriber on that host), and a drain holds its webhook's lease, so exactly one
process calls through a breaker at a time (one half-open probe, never several).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask, current_app
from prometheus_client.core import GaugeMetricFamily, Metric

from app.core.metrics import register_scrape_collector
from app.core.shared_breakers import STATES, SharedBreakers

log = logging.getLogger(__name__)
PREFIX = "postboard:webhooks:breaker"
KEY = "webhook_breakers"


def breakers_for(config: Mapping[str, Any]) -> SharedBreakers:
    return SharedBreakers(
        PREFIX,
        redis_url=config.get("REDIS_URL"),
        directory=os.path.join(str(config["CACHE_DIR"]), "webhook-breakers"),
        fail_max=int(config["WEBHOOKS_BREAKER_FAILURES"]),
        reset_seconds=float(config["WEBHOOKS_BREAKER_RESET_SECONDS"]),
    )


def breakers() -> SharedBreakers:
    """The current app's breakers (one set per app and process)."""
    found: SharedBreakers | None = current_app.extensions.get(KEY)
    if found is None:
        found = current_app.extensions[KEY] = breakers_for(current_app.config)
    return found


def forget_quietly(key: str) -> None:
    """Drop a deleted target's breaker state; a store that does not answer keeps it, orphaned
    (a deleted webhook is never called again, so the state is stale, never wrong)."""
    try:
        breakers().forget(key)
    except Exception as error:  # Redis or the disk cache failing must not fail the delete
        log.warning("webhook_breaker_not_forgotten", extra={"key": key, "error": repr(error)})


class BreakerStatesCollector:
    """`postboard_webhook_breakers{state}`: how many targets are closed, open or half-open, read
    from the shared store at scrape time; absent when the store does not answer."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        try:
            counts = breakers_for(self.config).count_by_state()
        except Exception:  # any store failure: the rest of the scrape still answers
            return
        gauge = GaugeMetricFamily(
            "postboard_webhook_breakers",
            "Webhook targets by circuit-breaker state (targets that never failed may be absent "
            "from closed).",
            labels=["state"],
        )
        for state in STATES:
            gauge.add_metric([state], counts.get(state, 0))
        yield gauge


def register(app: Flask) -> None:
    register_scrape_collector(app, BreakerStatesCollector)
