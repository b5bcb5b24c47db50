"""Tracing in one process (issue #19, contract §10): with the SDK's in-memory exporter, a request
and the task it caused form one tree across the real broker of the backend (embedded SQLite or
Redis): HTTP server span -> SQL (and Redis) spans -> the publish span -> the run span in a worker
thread -> its SQL. A malformed `traceparent` starts a new trace; with no endpoint nothing records,
nothing exports and no exporter thread starts, while the ids still reach the logs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from app.core import publishing, tracing
from tests.factories import bearer, login, register
from tests.support.backends import REDIS_URL
from tests.support.workers import broker_settings, forget_queue, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def traced(make_app, tmp_path: Path) -> Iterator[tuple[Flask, InMemorySpanExporter]]:
    """The web app as deployed (it publishes its write-throughs), traced into memory."""
    web = make_app(TASKS_ENABLED=True, **broker_settings(tmp_path))
    exporter = InMemorySpanExporter()
    state = tracing.setup_tracing("web", flask_app=web, exporter=exporter)
    assert state is not None
    assert state.exporting
    try:
        yield web, exporter
    finally:
        tracing.reset_tracing()


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    current = tracing.current()
    assert current is not None
    current.provider.force_flush()
    return list(exporter.get_finished_spans())


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def db_system(span: ReadableSpan) -> Any:
    return (span.attributes or {}).get("db.system") or (span.attributes or {}).get("db.system.name")


def test_a_request_and_its_task_form_one_tree_across_the_broker(
    traced, json_logs, monkeypatch
) -> None:
    """(json_logs: the in-process worker's setup_logging replaces the root logger's handlers;
    the fixture puts the test session's back afterwards.)"""
    web, exporter = traced
    from worker import make_celery

    # Publishing waits 0.5 s at most, then skips for a cool-down: on two busy cores the embedded
    # broker, polled by the worker thread in this same process, can take longer.
    monkeypatch.setattr(publishing._publisher, "timeout", 10.0)

    celery = make_celery(web)  # the one Celery app, bound to the traced web app
    http = web.test_client()
    user = register(http)
    headers = bearer(login(http, user["email"])["access_token"])
    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        patched = http.patch(
            f"/api/users/{user['id']}",
            json={"display_name": "Traced"},
            headers={**headers, "traceparent": TRACEPARENT},
        )
        assert patched.status_code == 200, patched.json

        def task_ran() -> list[ReadableSpan]:
            return [
                s
                for s in finished(exporter)
                if s.name == "run/cache.refresh_user" and hex_trace(s) == TRACE_ID
            ]

        (run,) = wait_for("the worker's run span", task_ran, timeout=60)
    spans = [s for s in finished(exporter) if hex_trace(s) == TRACE_ID]
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.parent is not None
    assert server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_ID  # the caller's span
    below_server = children(spans, server)
    sql = [s for s in below_server if s.kind == SpanKind.CLIENT and db_system(s) != "redis"]
    assert sql, "the request's SQL is traced under its span"
    if REDIS_URL:  # the limit's round trip and the cache's commands
        assert [s for s in below_server if db_system(s) == "redis"], [s.name for s in spans]
    (publish,) = [s for s in below_server if s.name == "apply_async/cache.refresh_user"]
    assert publish.kind == SpanKind.PRODUCER
    assert run.kind == SpanKind.CONSUMER
    assert run.parent is not None
    assert publish.context is not None
    assert run.parent.span_id == publish.context.span_id  # parented across the broker
    assert any(s.kind == SpanKind.CLIENT for s in children(spans, run)), "the task's SQL"
    forget_queue(celery.conf.broker_url, "celery")


def test_a_malformed_traceparent_starts_a_new_trace(traced, json_logs) -> None:
    web, exporter = traced
    answered = web.test_client().get("/health", headers={"traceparent": "00-xyz-not-a-trace-01"})
    assert answered.status_code == 200
    (server,) = [s for s in finished(exporter) if s.kind == SpanKind.SERVER]
    assert server.parent is None
    assert server.context is not None
    assert server.context.trace_id != 0
    (line,) = [json.loads(raw) for raw in json_logs().splitlines() if '"app.access"' in raw]
    assert line["trace_id"] == hex_trace(server)
    assert line["span_id"] == format(server.context.span_id, "016x")


def test_the_span_covers_the_whole_pipeline_a_refusal_included(traced) -> None:
    """The instrumentation's hooks wrap the pipeline's: a 415 raised in its first step is still
    the request's span, with the caller's trace."""
    web, exporter = traced
    from app.core import pipeline

    assert web.before_request_funcs[None][-1] is pipeline.before
    assert web.after_request_funcs[None] == [pipeline.finish]
    refused = web.test_client().post(
        "/api/users", data="x", content_type="text/plain", headers={"traceparent": TRACEPARENT}
    )
    assert refused.status_code == 415
    (server,) = [s for s in finished(exporter) if s.kind == SpanKind.SERVER]
    assert hex_trace(server) == TRACE_ID
    assert (server.attributes or {}).get("http.status_code", 415) == 415


def test_with_no_endpoint_nothing_records_and_no_thread_starts(
    make_app, json_logs, monkeypatch
) -> None:
    app = make_app()
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads_before = {t.ident for t in threading.enumerate()}
    state = tracing.setup_tracing("web", flask_app=app)
    assert state is not None
    assert not state.exporting
    from opentelemetry import trace
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    seen: list[Any] = []

    @app.get("/_trace_probe")
    def probe() -> dict[str, Any]:
        seen.append(trace.get_current_span())
        return {}

    answered = app.test_client().get("/_trace_probe", headers={"traceparent": TRACEPARENT})
    assert answered.status_code == 200
    (span,) = seen
    assert not span.is_recording()
    assert format(span.get_span_context().trace_id, "032x") == TRACE_ID
    # No exporter thread (the SDK names its batch processor's "OtelBatch...Processor"); other
    # threads may come and go with the rest of the suite running in this process.
    new_threads = {t.name for t in threading.enumerate() if t.ident not in threads_before}
    assert not any(name.startswith("Otel") for name in new_threads), new_threads
    assert not state.provider._active_span_processor._span_processors  # nothing to export to
    assert not SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry
    # A malformed traceparent, or none: a new trace, export off too.
    for header in ({"traceparent": "00-xyz-not-a-trace-01"}, {}):
        assert app.test_client().get("/_trace_probe", headers=header).status_code == 200
    fresh = [format(s.get_span_context().trace_id, "032x") for s in seen[1:]]
    assert all(s.get_span_context().is_valid for s in seen[1:])
    assert len({TRACE_ID, *fresh}) == 3
    lines = [json.loads(raw) for raw in json_logs().splitlines() if '"app.access"' in raw]
    assert [line["trace_id"] for line in lines] == [TRACE_ID, *fresh]
