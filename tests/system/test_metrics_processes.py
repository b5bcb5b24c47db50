"""GET /metrics across real processes (contract §7): totals add up across gunicorn workers, and a
real Celery worker's task outcomes and durations are counted.

The in-process metrics (labels, cache, rate limits, queue depth, merging the multiprocess files)
are in tests/api/test_metrics.py.
"""

from __future__ import annotations

import os
import re
import signal
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from celery import Celery
from flask import Flask
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support.backends import DEAD_DATABASE
from tests.support.live import live_server
from tests.support.metrics import (
    LATENCY_COUNT,
    REQUESTS,
    Samples,
    parse,
    route_of,
    value,
    write_samples,
)
from tests.support.workers import Worker, broker_settings, forget_queue, wait_for

# For real: gunicorn workers, a Celery worker ------------------------------------------------


def fetch(base: str, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(base + path, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def get_status(base: str, path: str) -> int:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_totals_across_gunicorn_workers(app: Flask, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus-web"
    route = route_of(app, "/api/users")
    stale = (
        "from app.core.metrics import HTTP_REQUESTS as R; R.labels('GET', {!r}, '200').inc(1000)"
    )
    write_samples(metrics_dir, stale.format(route))
    assert list(metrics_dir.glob("counter_*.db")), "a previous run's file"

    n = 0
    with live_server(
        app, tmp_path, WEB_CONCURRENCY="3", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    ) as (http, proc):
        base = http.base
        # Batches until two workers have counted some (the kernel may hand one worker a batch).
        for _batch in range(10):
            with ThreadPoolExecutor(max_workers=6) as pool:
                statuses = list(pool.map(lambda _: get_status(base, "/api/users"), range(60)))
            assert statuses == [200] * 60
            n += 60
            # Every worker's file holds zero series from its start; these counted requests.
            writers = {p.name for p in metrics_dir.glob("counter_*.db") if _counted(p, route)}
            if len(writers) >= 2:
                break
        assert len(writers) >= 2, f"the requests were served by several workers: {writers}"

        ok = {"method": "GET", "route": route, "status": "200"}
        for _ in range(9):  # whichever worker answers, the totals are the same
            samples = fetch(base)
            assert value(samples, REQUESTS, **ok) == n  # not 1000 + n: emptied at start
            assert value(samples, LATENCY_COUNT, **ok) == n

        # A worker dies: the master replaces it, and its counts stay in the totals.
        workers = children(proc.pid)
        assert len(workers) == 3
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "gunicorn to replace the killed worker",
            lambda: victim not in (now := children(proc.pid)) and len(now) == 3,
        )
        assert get_status(base, "/api/users") == 200
        for _ in range(6):
            assert value(fetch(base), REQUESTS, **ok) == n + 1


def _counted(path: Path, route: str) -> bool:
    """Whether this one process' file counted a GET of `route`."""
    for metric in MultiProcessCollector.merge([str(path)], accumulate=True):
        for sample in metric.samples:
            if sample.name == REQUESTS and sample.labels.get("route") == route and sample.value > 0:
                return True
    return False


@pytest.mark.slow
def test_every_family_is_in_the_first_scrape_at_zero(app: Flask, tmp_path: Path) -> None:
    """Contract §7: an alert on a family sees 0, not nothing, before its first event."""
    metrics_dir = tmp_path / "prometheus-web"
    with live_server(app, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (http, _proc):
        text = urllib.request.urlopen(http.base + "/metrics", timeout=10).read().decode()
    samples = parse(text)
    names = {name for name, _labels in samples}
    for family in (
        REQUESTS,
        LATENCY_COUNT,
        "postboard_rate_limited_total",
        "postboard_cache_hits_total",
        "postboard_cache_misses_total",
    ):
        assert family in names, f"{family} missing from the first scrape"
    users = route_of(app, "/api/users")
    assert value(samples, "postboard_rate_limited_total", method="POST", route=users) == 0
    refused = ("postboard_rate_limited_total", frozenset({("method", "POST"), ("route", users)}))
    assert refused in samples, "the series exists (at 0), not just a default of the lookup"
    assert value(samples, "postboard_cache_hits_total", kind="user") == 0


def _nodename_dir(base: Path, nodename: str) -> Path:
    return base / re.sub(r"[^A-Za-z0-9@._-]", "_", nodename)


@pytest.mark.slow
def test_task_outcomes_and_durations_from_a_real_worker(app: Flask, tmp_path: Path) -> None:
    broker = broker_settings(tmp_path)
    queue = f"metrics-tasks-{uuid.uuid4().hex[:8]}"
    celery_dir = tmp_path / "prometheus-celery"
    # The worker's database is unreachable: worker.ping fails, cache.refresh_user retries (a
    # transient database error), worker.sleep (no database) succeeds.
    worker = Worker(
        app, tmp_path, broker, DATABASE_URL=DEAD_DATABASE, PROMETHEUS_MULTIPROC_DIR=str(celery_dir)
    )
    stale = (
        "from app.core.metrics import CELERY_TASKS as T;"
        "T.labels('worker.sleep', 'succeeded').inc(500)"
    )
    write_samples(_nodename_dir(celery_dir, worker.nodename), stale)
    producer = Celery("metrics-test", broker=broker["CELERY_BROKER_URL"])
    tasks = "postboard_celery_tasks_total"
    try:
        worker.start("--pool=prefork", "--concurrency=1", "-Q", queue)
        with live_server(
            app,
            tmp_path,
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus-web"),
            CELERY_METRICS_DIR=str(celery_dir),
        ) as (http, _):
            before = fetch(http.base)
            assert value(before, tasks, task="worker.sleep") == 0, "emptied when it started"
            token = uuid.uuid4().hex
            for _ in range(2):
                producer.send_task("worker.sleep", args=[0, token], queue=queue)
            producer.send_task("worker.ping", queue=queue)
            producer.send_task("cache.refresh_user", args=[str(uuid.uuid4())], queue=queue)

            def settled() -> Samples | None:
                samples = fetch(http.base)
                done = (
                    value(samples, tasks, task="worker.sleep", outcome="succeeded") == 2
                    and value(samples, tasks, task="worker.ping", outcome="failed") == 1
                    and value(samples, tasks, task="cache.refresh_user", outcome="retried") >= 1
                )
                return samples if done else None

            samples = wait_for("the worker's task metrics in the web's /metrics", settled, 60)
        duration = "postboard_celery_task_duration_seconds_count"
        assert value(samples, duration, task="worker.sleep") == 2
        assert value(samples, duration, task="worker.ping") == 1
        assert value(samples, tasks, task="worker.sleep", outcome="failed") == 0
        assert value(samples, tasks, task="worker.ping", outcome="succeeded") == 0
        # Written by the pool process, under this worker's own directory.
        written = list(_nodename_dir(celery_dir, worker.nodename).glob("counter_*.db"))
        assert written
        assert worker.proc is not None
        assert all(p.name != f"counter_{worker.proc.pid}.db" for p in written)
    finally:
        worker.stop()
        producer.close()
        forget_queue(broker["CELERY_BROKER_URL"], queue)
