"""Prometheus metrics: what they are, how requests feed them, and how `/metrics` renders them.

Plain `prometheus_client` (not prometheus-flask-exporter): its exporter registers its own
undocumented `/metrics` route and its metrics on the global registry (many apps in one test
session collide on "Duplicated timeseries"), and we need three things it does not do: a token,
a scrape-time collector that reads the Celery broker, and the Celery workers' metric files merged
into the same answer. The multiprocess wiring it would save is a dozen lines here and in
`gunicorn.conf.py`.

Two modes, chosen by the environment before Python starts (prometheus_client reads it at import):

- `PROMETHEUS_MULTIPROC_DIR` set (gunicorn, Celery workers): every process writes its samples to
  files in that directory and a scrape merges the files of every process, so whichever gunicorn
  worker answers, the numbers are the totals. The web also merges the Celery workers' directory
  (`CELERY_METRICS_DIR`, searched recursively) so task metrics come out of the same endpoint.
- not set (tests, `flask` CLI, `flask run`): the metrics live in this process and a scrape reads
  them directly.

Every metric carries labels, so no sample (and no file) exists before the web app is built.
gunicorn's master builds the app (`preload_app`), then empties the directory of the previous
run's files, then forks; each worker writes its own files, zero series included, as it starts
(`claim_after_fork`).
No gauge is written by processes (the queue depths are read from the broker at scrape time),
so no multiprocess_mode is involved.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.operation_metrics import OPERATION_LATENCY, OPERATIONS
from app.core.outbox_metrics import OutboxBacklogCollector
from app.core.queue_depth import QueueDepthCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the Prometheus text format every scraper reads
UNMATCHED_ROUTE = "<unmatched>"  # 404 and 405: a raw path never becomes a label value
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# `_created` series are exported in single-process mode only: off, so both modes look alike.
disable_created_metrics()

HTTP_REQUESTS = Counter(
    "postboard_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=None,
)
HTTP_LATENCY = Histogram(
    "postboard_http_request_duration_seconds",
    "Time from the request reaching Flask to its response, by method, route template and status.",
    ["method", "route", "status"],
    registry=None,
)
RATE_LIMITED = Counter(
    "postboard_rate_limited",
    "Requests refused with 429 by the rate limiter, by method and route template.",
    ["method", "route"],
    registry=None,
)
CACHE_HITS = Counter(
    "postboard_cache_hits",
    "Cache reads answered from the cache, by kind (user, post).",
    ["kind"],
    registry=None,
)
CACHE_MISSES = Counter(
    "postboard_cache_misses",
    "Cache reads that went to the database (absent, invalidated, or cache unreachable), by kind.",
    ["kind"],
    registry=None,
)
CELERY_TASKS = Counter(
    "postboard_celery_tasks",
    "Celery task executions by task name and outcome (succeeded, failed, retried).",
    ["task", "outcome"],
    registry=None,
)
CELERY_TASK_DURATION = Histogram(
    "postboard_celery_task_duration_seconds",
    "Run time of each Celery task execution (every attempt), by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=None,
)
OUTBOX_PUBLISHED = Counter(
    "postboard_outbox_published",
    "Events the outbox relays published to the broker (each confirmed by it; a re-publish after "
    "a relay died counts again), by feed queue.",
    ["queue"],
    registry=None,
)
OUTBOX_PUBLISH_FAILURES = Counter(
    "postboard_outbox_publish_failures",
    "Relay cycles whose publish the broker refused or timed out (the events wait for a retry), "
    "by feed queue.",
    ["queue"],
    registry=None,
)
FEED_CONSUMED = Counter(
    "postboard_feed_events_consumed",
    "Feed events a consumer processed for the first time, by consumer.",
    ["consumer"],
    registry=None,
)
FEED_DUPLICATES = Counter(
    "postboard_feed_duplicates",
    "Feed events a consumer had already processed (a re-publish or a redelivery), skipped.",
    ["consumer"],
    registry=None,
)
EVENTS_BY_TYPE = Counter(
    "postboard_events",
    "Committed events by type, counted once each from the event feed (its metrics consumer).",
    ["type"],
    registry=None,
)
WEBHOOK_DELIVERIES = Counter(
    "postboard_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (will be retried), dead "
    "(dead-lettered after the last attempt), skipped_open (a drain found its target's breaker "
    "open: its deliveries wait, no attempt made).",
    ["outcome"],
    registry=None,
)
WEBHOOK_OUTCOMES = ("delivered", "failed", "dead", "skipped_open")
PROCESS_METRICS = (
    HTTP_REQUESTS,
    HTTP_LATENCY,
    RATE_LIMITED,
    OPERATIONS,
    OPERATION_LATENCY,
    CACHE_HITS,
    CACHE_MISSES,
    CELERY_TASKS,
    CELERY_TASK_DURATION,
    OUTBOX_PUBLISHED,
    OUTBOX_PUBLISH_FAILURES,
    FEED_CONSUMED,
    FEED_DUPLICATES,
    EVENTS_BY_TYPE,
    WEBHOOK_DELIVERIES,
)


def claim_after_fork() -> None:
    """In a process forked from one that built the app (a gunicorn worker): write this process's
    sample files now, zero series included. prometheus_client moves every sample to the new
    process's files at its first metric operation; without this a scrape could come first."""
    if multiprocess_dir() is None:
        return
    for metric in PROCESS_METRICS:
        metric.collect()  # reads each sample's value: that operation does the move


def multiprocess_dir() -> str | None:
    """The directory this process writes its samples to, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def clean_multiprocess_dir(path: str) -> int:
    """Create `path` if missing and delete the sample files a previous run left; returns how many.

    Call it before any process of the new run writes (gunicorn's master before forking, the
    Celery worker's main process before its pool starts).
    """
    os.makedirs(path, exist_ok=True)
    removed = 0
    for name in glob.glob(os.path.join(path, "*.db")):
        try:
            os.remove(name)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def remove_dead_process_files(path: str) -> int:
    """Delete the sample files (`<kind>_<pid>.db`) of processes no longer running; for a
    directory that several live processes share (relays on one host), which none may empty."""
    removed = 0
    for name in glob.glob(os.path.join(path, "*_*.db")):
        pid = os.path.basename(name).rsplit("_", 1)[-1].removesuffix(".db")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# --- Recording ----------------------------------------------------------------------------------


def record_cache_read(kind: str, *, hit: bool) -> None:
    (CACHE_HITS if hit else CACHE_MISSES).labels(kind=kind).inc()


def init_metrics(app: Flask) -> None:
    """Prepare metrics for `app` (the pipeline, app/core/pipeline.py, records every request; the
    `/metrics` route itself is in app/ops/routes.py)."""
    if (directory := multiprocess_dir()) is not None:
        os.makedirs(directory, exist_ok=True)  # prometheus_client writes there from now on
    _document_security_scheme(app)


def zero_series(app: Flask, cache_kinds: Iterable[str]) -> None:
    """Create every series an alert may watch at 0, so each family is in the first scrape (a
    labelled family has no sample, and so no line, until a child exists): requests, latency and
    rate-limit refusals for each route and method (status 200 for the first two), cache hits
    and misses for each kind the domains cache, and the relays' counters of the feed queue."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) & KNOWN_METHODS - {"HEAD", "OPTIONS"}):
            HTTP_REQUESTS.labels(method, rule.rule, "200")
            HTTP_LATENCY.labels(method, rule.rule, "200")
            RATE_LIMITED.labels(method, rule.rule)
    for kind in cache_kinds:
        CACHE_HITS.labels(kind=kind)
        CACHE_MISSES.labels(kind=kind)
    OUTBOX_PUBLISHED.labels(queue=app.config["OUTBOX_QUEUE"])
    OUTBOX_PUBLISH_FAILURES.labels(queue=app.config["OUTBOX_QUEUE"])
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome=outcome)


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def record_request(method: str, route: str, status: int, seconds: float | None) -> None:
    """Count one answered request (and time it, when `seconds` is known)."""
    method = method if method in KNOWN_METHODS else "OTHER"
    children = _children.get((method, route, status))
    if children is None:  # label children resolved once per (method, route, status)
        code = str(status)
        children = (
            HTTP_REQUESTS.labels(method, route, code),
            HTTP_LATENCY.labels(method, route, code),
        )
        if len(_children) < 10000:  # route templates only, never raw paths: bounded anyway
            _children[(method, route, status)] = children
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)
    if status == 429:
        RATE_LIMITED.labels(method, route).inc()


def _document_security_scheme(app: Flask) -> None:
    """The `metricsToken` scheme the /metrics operation names in the OpenAPI document."""
    from app.extensions import api

    spec = api.spec
    if spec is not None and "metricsToken" not in spec.components.security_schemes:
        spec.components.security_scheme(
            "metricsToken",
            {
                "type": "http",
                "scheme": "bearer",
                "description": "The METRICS_TOKEN configured on the server (when one is).",
            },
        )


# --- Scraping -----------------------------------------------------------------------------------


class ScrapeRefused(Exception):
    """The scrape did not carry the configured metrics token (`reason` says how)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def authorize_scrape(authorization: str | None, token: str | None) -> None:
    """Raise ScrapeRefused unless `token` is unset or `authorization` is `Bearer <token>`."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ScrapeRefused("missing")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ScrapeRefused("invalid")


# A collector a domain adds to every scrape, built from the app's config (scrape-time reads).
ScrapeCollector = Callable[[Mapping[str, Any]], Any]
SCRAPE_COLLECTORS = "scrape_collectors"


def register_scrape_collector(app: Flask, factory: ScrapeCollector) -> None:
    """Add `factory(config)` to every scrape of `app` (e.g. a gauge read from a shared store)."""
    app.extensions.setdefault(SCRAPE_COLLECTORS, []).append(factory)


def render(config: dict[str, Any]) -> tuple[bytes, str]:
    """The exposition body and its content type, for this app's settings."""
    return generate_latest(build_registry(config)), CONTENT_TYPE


def build_registry(config: dict[str, Any]) -> CollectorRegistry:
    """A fresh registry for one scrape: never the global one, so nothing leaks between apps."""
    from flask import current_app, has_app_context

    registry = CollectorRegistry()
    web_dir = multiprocess_dir()
    if web_dir is not None:
        registry.register(FilesCollector(web_dir, _celery_dirs(config)))
    else:
        for metric in PROCESS_METRICS:
            registry.register(metric)
    names = ("CELERY_DEFAULT_QUEUE", "OUTBOX_QUEUE", "WEBHOOKS_QUEUE")
    queues = [str(config[name]) for name in names if config.get(name)]
    registry.register(QueueDepthCollector(str(config.get("CELERY_BROKER_URL") or ""), queues))
    registry.register(OutboxBacklogCollector())
    if has_app_context():
        for factory in current_app.extensions.get(SCRAPE_COLLECTORS, ()):
            registry.register(factory(config))
    return registry


def _celery_dirs(config: dict[str, Any]) -> list[str]:
    value = config.get("CELERY_METRICS_DIR") or []
    return [value] if isinstance(value, str) else [str(v) for v in value if v]


class FilesCollector:
    """Every process' sample files, merged: this host's gunicorn workers (dead ones included, so
    counters never drop when a worker is replaced) and the Celery workers' directories.

    One merge over all files (not one MultiProcessCollector per directory), so a metric that
    several directories hold, such as the cache counters, comes out once, summed.
    """

    def __init__(self, web_dir: str, celery_dirs: Iterable[str] = ()) -> None:
        self.web_dir = web_dir
        self.celery_dirs = list(celery_dirs)

    def files(self) -> list[str]:
        found = {os.path.realpath(f) for f in glob.glob(os.path.join(self.web_dir, "*.db"))}
        for directory in self.celery_dirs:
            pattern = os.path.join(directory, "**", "*.db")
            found.update(os.path.realpath(f) for f in glob.glob(pattern, recursive=True))
        return sorted(found)

    def collect(self) -> Iterable[Metric]:
        for _attempt in range(3):
            try:
                return MultiProcessCollector.merge(self.files(), accumulate=True)
            except FileNotFoundError:  # a directory was being emptied (a restart): read again
                continue
        return []
