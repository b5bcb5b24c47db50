"""GET /metrics (contract §7): Prometheus text, by route template and status, cache hits and
misses, rate-limit rejections, Celery queue depth, task outcomes and durations; totals across
gunicorn workers and Celery pool processes (prometheus_client's multiprocess mode).

In this pytest process PROMETHEUS_MULTIPROC_DIR is unset: the metrics are this process' own and
shared by every app the session builds, so the in-process tests compare before and after. The
multiprocess tests run real gunicorn and Celery processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.core.metrics import FilesCollector, build_registry
from app.users.cache import USER_KIND
from tests.conftest import assert_error, bearer, test_config
from tests.live import ROOT, live_server
from tests.test_cache_workers import Worker, broker_settings, wait_for
from tests.test_rate_limits import fresh_ip, get, limited_app

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
REDIS_SEP = "\x06\x16"
DEAD_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def parse(text: str) -> Samples:
    """{(sample name, labels): value}; the parser rejects anything Prometheus would."""
    samples: Samples = {}
    names: list[str] = []
    for family in text_string_to_metric_families(text):
        names.append(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    assert len(names) == len(set(names)), f"a metric family appears twice: {sorted(names)}"
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def label_values(samples: Samples) -> set[str]:
    return {v for (_, labels) in samples for _, v in labels}


def scrape(client: FlaskClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.get_data(as_text=True))


def route_of(app: Flask, path: str, method: str = "GET") -> str:
    rule, _ = app.url_map.bind("localhost").match(path, method=method, return_rule=True)
    return rule.rule


REQUESTS = "postboard_http_requests_total"
LATENCY_COUNT = "postboard_http_request_duration_seconds_count"


# 1. In-process: what is counted, and how it is labelled -------------------------------------------


def test_requests_are_counted_by_route_template_and_status(app: Flask, client, account) -> None:
    missing = str(uuid.uuid4())
    route = route_of(app, f"/api/users/{account.id}")
    assert "<" in route  # a template, not a path
    before = scrape(client)
    assert client.get(f"/api/users/{account.id}").status_code == 200
    assert client.get(f"/api/users/{account.id}").status_code == 200
    assert client.get(f"/api/users/{missing}").status_code == 404
    after = scrape(client)

    for status, count in (("200", 2), ("404", 1)):
        labels = {"method": "GET", "route": route, "status": status}
        assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == count
        assert (
            value(after, LATENCY_COUNT, **labels) - value(before, LATENCY_COUNT, **labels) == count
        )
        inf = {**labels, "le": "+Inf"}
        bucket = "postboard_http_request_duration_seconds_bucket"
        assert value(after, bucket, **inf) - value(before, bucket, **inf) == count
    assert not {v for v in label_values(after) if account.id in v or missing in v}


def test_unknown_paths_and_methods_share_one_label(client) -> None:
    junk = uuid.uuid4().hex
    before = scrape(client)
    assert client.get(f"/no-such-{junk}").status_code == 404
    assert client.get(f"/api/{junk}/deeper/{junk}").status_code == 404
    assert client.post("/health").status_code == 405
    assert client.open("/health", method=f"X{junk[:8].upper()}").status_code == 405
    after = scrape(client)

    unmatched = {"route": "<unmatched>"}
    assert (
        value(after, REQUESTS, status="404", method="GET", **unmatched)
        - value(before, REQUESTS, status="404", method="GET", **unmatched)
        == 2
    )
    assert (
        value(after, REQUESTS, status="405", **unmatched)
        - value(before, REQUESTS, status="405", **unmatched)
        == 2
    )
    assert value(after, REQUESTS, method="OTHER", status="405") >= 1  # odd methods: one label
    assert not {v for v in label_values(after) if junk in v.lower()}


def test_rate_limit_rejections_are_counted_by_route(app: Flask) -> None:
    limited = limited_app(app)  # 5/minute for anonymous clients
    client = limited.test_client()
    ip = fresh_ip()
    route = route_of(limited, "/api/users")
    before = scrape(client)
    statuses = [get(client, "/api/users", ip).status_code for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3
    after = scrape(client)  # /metrics itself is never limited

    rejected = "postboard_rate_limited_total"
    assert (
        value(after, rejected, method="GET", route=route)
        - value(before, rejected, method="GET", route=route)
        == 3
    )
    limited_requests = {"method": "GET", "route": route, "status": "429"}
    assert (
        value(after, REQUESTS, **limited_requests) - value(before, REQUESTS, **limited_requests)
        == 3
    )


def test_cache_hits_and_misses_are_counted(client, account) -> None:
    hits, misses = "postboard_cache_hits_total", "postboard_cache_misses_total"
    first = scrape(client)
    assert client.get(f"/api/users/{account.id}").status_code == 200  # anonymous: one read
    second = scrape(client)
    assert client.get(f"/api/users/{account.id}").status_code == 200
    third = scrape(client)

    assert value(second, misses, kind=USER_KIND) - value(first, misses, kind=USER_KIND) == 1
    assert value(second, hits, kind=USER_KIND) - value(first, hits, kind=USER_KIND) == 0
    assert value(third, hits, kind=USER_KIND) - value(second, hits, kind=USER_KIND) == 1
    assert value(third, misses, kind=USER_KIND) - value(second, misses, kind=USER_KIND) == 0


def test_metrics_token_when_configured(app: Flask, account) -> None:
    token = f"metrics-{uuid.uuid4().hex}"
    protected = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], METRICS_TOKEN=token))
    client = protected.test_client()

    missing = client.get("/metrics")
    assert_error(missing, 401, "UNAUTHENTICATED")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    for wrong in (
        bearer(token + "x"),
        bearer(token[:-1]),
        account.headers,  # a user's valid JWT is not the metrics token
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
    ):
        refused = client.get("/metrics", headers=wrong)
        assert_error(refused, 401, "UNAUTHENTICATED")
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    samples = scrape(client, **bearer(token))
    assert value(samples, REQUESTS, route="/metrics", status="401") >= 6
    # Without a token configured, /metrics is open.
    assert app.test_client().get("/metrics").status_code == 200


def test_openapi_documents_metrics(client) -> None:
    spec = client.get("/api/openapi.json").get_json()
    operation = spec["paths"]["/metrics"]["get"]
    assert operation["operationId"] == "metrics"
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert "401" in operation["responses"]
    assert {"metricsToken": []} in operation["security"]
    assert {} in operation["security"]  # open when no token is configured
    assert spec["components"]["securitySchemes"]["metricsToken"]["scheme"] == "bearer"


# 2. Celery queue depth, read from the broker at scrape time ------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> dict[str, str]:
    """CELERY_BROKER_URL when set (Redis), else an embedded SQLite broker of this test's own."""
    return broker_settings(tmp_path)


def _forget_queue(broker_url: str, queue: str) -> None:
    """Remove a test queue from a Redis broker: its lists and kombu's bindings for it."""
    if not broker_url.startswith("redis"):
        return
    client = redis.Redis.from_url(broker_url)
    try:
        keys = [queue, *(f"{queue}{REDIS_SEP}{step}" for step in (3, 6, 9))]
        keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        client.delete(*keys)
        client.zrem("_kombu.binding_deadlines", queue)
    finally:
        client.close()


def test_queue_depth_counts_messages_waiting_in_each_queue(
    app: Flask, broker: dict[str, str]
) -> None:
    queue = f"metrics-depth-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    producer = Celery("metrics-test", broker=broker["CELERY_BROKER_URL"])
    web = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **broker)).test_client()
    on_redis = broker["CELERY_BROKER_URL"].startswith("redis")
    try:
        for _ in range(3):
            producer.send_task("worker.ping", queue=queue)
        if on_redis:  # kombu puts prioritised messages in sub-lists of the queue
            producer.send_task("worker.ping", queue=queue, priority=9)
        samples = scrape(web)
        assert value(samples, "postboard_celery_broker_up") == 1
        expected = 4 if on_redis else 3
        assert value(samples, "postboard_celery_queue_depth", queue=queue) == expected
        assert ("postboard_celery_queue_depth", frozenset({("queue", "celery")})) in samples
        if on_redis:
            client = redis.Redis.from_url(broker["CELERY_BROKER_URL"])
            sub_lists = [client.llen(f"{queue}{REDIS_SEP}{step}") for step in (3, 6, 9)]
            client.close()
            assert sum(sub_lists) == 1, "the prioritised message is in a sub-list"
    finally:
        producer.close()
        _forget_queue(broker["CELERY_BROKER_URL"], queue)


@pytest.mark.parametrize(
    "broker_url",
    ["redis://127.0.0.1:1/0", "sqla+postgresql+psycopg://postgres@127.0.0.1:1/nowhere"],
)
def test_a_dead_broker_gives_broker_up_zero_and_no_depth(app: Flask, broker_url: str) -> None:
    config = test_config(app.config["SQLALCHEMY_DATABASE_URI"], CELERY_BROKER_URL=broker_url)
    samples = scrape(create_app(config).test_client())
    assert value(samples, "postboard_celery_broker_up") == 0
    assert not [key for key in samples if key[0] == "postboard_celery_queue_depth"]
    assert value(samples, REQUESTS) > 0  # the rest of the scrape is there


def test_no_scrape_registers_on_the_global_registry(app: Flask) -> None:
    from prometheus_client import REGISTRY

    names = set(REGISTRY._names_to_collectors)
    build_registry(app.config)
    create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"]))
    assert set(REGISTRY._names_to_collectors) == names
    assert not [n for n in names if n.startswith("postboard_")]


# 3. Multiprocess files -------------------------------------------------------------------------


def write_samples(directory: Path, code: str) -> None:
    """Run `code` in a new process writing its samples to `directory` (as a worker would)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def test_files_of_web_and_worker_directories_merge_into_one_family(tmp_path: Path) -> None:
    web, celery = tmp_path / "web", tmp_path / "celery"
    hit = "from app.core.metrics import CACHE_HITS; CACHE_HITS.labels(kind='user').inc({})"
    write_samples(web, hit.format(3))
    write_samples(web, hit.format(4))  # another process
    write_samples(celery / "worker-a@host", hit.format(5))
    families = list(FilesCollector(str(web), [str(celery)]).collect())
    cache = [f for f in families if f.name == "postboard_cache_hits"]
    assert len(cache) == 1
    assert [(s.labels, s.value) for s in cache[0].samples] == [({"kind": "user"}, 12.0)]
    # The web's own directory is never counted twice, even inside the Celery one.
    nested = FilesCollector(str(celery / "worker-a@host"), [str(celery)]).collect()
    assert [s.value for f in nested for s in f.samples if f.name == "postboard_cache_hits"] == [5]


# 4. For real: gunicorn workers, a Celery worker ------------------------------------------------


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

    n = 60
    with live_server(
        app, tmp_path, WEB_CONCURRENCY="3", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
    ) as (http, proc):
        base = http.base
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(lambda _: get_status(base, "/api/users"), range(n)))
        assert statuses == [200] * n
        writers = {p.name for p in metrics_dir.glob("counter_*.db")}
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
        _forget_queue(broker["CELERY_BROKER_URL"], queue)
