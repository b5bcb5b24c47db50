"""GET /metrics (contract §7): Prometheus text, by route template and status, cache hits and
misses, rate-limit rejections, Celery queue depth, in this process; and the multiprocess files
of web and worker directories merging into one family.

In this pytest process PROMETHEUS_MULTIPROC_DIR is unset: the metrics are this process' own and
shared by every app the session builds, so the in-process tests compare before and after. The
multiprocess tests (real gunicorn and Celery processes) are in
tests/system/test_metrics_processes.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery
from flask import Flask

from app import create_app
from app.core.metrics import FilesCollector, build_registry
from app.users.cache import USER_KIND
from tests.factories import bearer
from tests.support.assertions import assert_error
from tests.support.backends import test_config
from tests.support.limits import fresh_ip, get, limited_app
from tests.support.metrics import (
    LATENCY_COUNT,
    REQUESTS,
    label_values,
    route_of,
    scrape,
    value,
    write_samples,
)
from tests.support.workers import REDIS_SEP, broker_settings, forget_queue

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
    """The app's broker (CELERY_BROKER_URL, else REDIS_URL), else an embedded SQLite broker of
    this test's own."""
    return broker_settings(tmp_path)


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
        forget_queue(broker["CELERY_BROKER_URL"], queue)


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
