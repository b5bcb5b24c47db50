"""Tracing across real processes (issue #19, contract §10): a real gunicorn (preload, tracing set
up in each worker after the fork) and a real Celery worker (prefork: set up in each child; threads,
as the webhooks worker runs: in the worker itself), on the backend's real broker.

- Export off: a request with a known `traceparent` and the task it caused share its trace id (and
  the request id) in both processes' log lines.
- Export on: with OTEL_EXPORTER_OTLP_ENDPOINT naming a local HTTP receiver, both processes send
  their spans over OTLP/HTTP (protobuf), and they form one trace: the worker's run span is the
  child of the web's publish span.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pytest_httpserver import HTTPServer

from tests.factories import PASSWORD
from tests.support.live import Http, live_server
from tests.support.workers import Worker, broker_settings, forget_queue, wait_for

pytestmark = pytest.mark.xdist_group("tracing-processes")


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def a_write(http: Http, headers: dict[str, str]) -> None:
    """Sign up, log in, and PATCH the profile with `headers`: the write publishes a task."""
    name = f"tr{uuid.uuid4().hex[:10]}"
    status, _, body = http.call(
        "POST",
        "/api/users",
        {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
    )
    assert status == 201, body
    user_id = body["data"]["id"]
    status, _, body = http.call(
        "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": PASSWORD}
    )
    assert status == 200, body
    auth = {"Authorization": f"Bearer {body['data']['access_token']}"}
    status, _, body = http.call(
        "PATCH", f"/api/users/{user_id}", {"display_name": "Traced"}, {**auth, **headers}
    )
    assert status == 200, body


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[dict[str, str]]:
    settings = broker_settings(tmp_path)
    yield settings
    forget_queue(settings["CELERY_BROKER_URL"], "celery")


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_request_and_its_task_share_the_trace_id_in_the_logs(
    app: Flask, tmp_path: Path, broker: dict[str, str], pool: str, monkeypatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    worker = Worker(app, tmp_path, broker).start(f"--pool={pool}", "--concurrency=1")
    trace_id, _, header = traceparent()
    request_id = f"req-trace-{uuid.uuid4().hex[:8]}"
    try:
        with live_server(app, tmp_path, TASKS_ENABLED="true", **broker) as (http, _proc):
            a_write(http, {"traceparent": header, "X-Request-ID": request_id})

            def task_lines() -> list[dict[str, Any]]:
                return [
                    line
                    for line in worker.lines()
                    if line.get("trace_id") == trace_id
                    and "cache.refresh_user" in str(line.get("event"))
                ]

            done = wait_for("the task's log line with the request's trace id", task_lines, 60)
        web_lines = [
            line
            for line in json_lines(tmp_path / "gunicorn.log")
            if line.get("trace_id") == trace_id
        ]
    finally:
        worker.stop()
    (access,) = [line for line in web_lines if line.get("event") == "request"]
    assert access["method"] == "PATCH"
    assert access["status"] == 200
    assert access["request_id"] == request_id
    assert all(line["request_id"] == request_id for line in done)
    assert all(len(line["span_id"]) == 16 for line in [access, *done])
    assert {line["span_id"] for line in done}.isdisjoint({access["span_id"]})  # the task's own span
    # Lines of other requests carry other traces: a new trace per request with no traceparent.
    others = {line.get("trace_id") for line in json_lines(tmp_path / "gunicorn.log")} - {trace_id}
    assert others - {None}, "the sign-up and login requests have traces of their own"


def spans_received(receiver: HTTPServer) -> list[tuple[str, Any]]:
    """(service name, span) for every span the receiver was sent over OTLP/HTTP."""
    spans = []
    for request, _response in receiver.log:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(request.get_data())
        for resource_spans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                spans.extend((attributes["service.name"], s) for s in scope_spans.spans)
    return spans


def test_spans_are_exported_over_otlp_http_from_the_web_and_the_worker(
    app: Flask, tmp_path: Path, broker: dict[str, str], httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/v1/traces", method="POST").respond_with_data(b"")
    otlp = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": httpserver.url_for("/").rstrip("/"),
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export soon after the request
    }
    worker = Worker(app, tmp_path, broker, **otlp).start("--pool=prefork", "--concurrency=1")
    trace_id, parent, header = traceparent()
    try:
        with live_server(app, tmp_path, TASKS_ENABLED="true", **broker, **otlp) as (http, _proc):
            a_write(http, {"traceparent": header})

            def run_span() -> list[tuple[str, Any]]:
                return [
                    (service, span)
                    for service, span in spans_received(httpserver)
                    if span.trace_id.hex() == trace_id and span.name == "run/cache.refresh_user"
                ]

            ((service, run),) = wait_for("the worker's run span over OTLP", run_span, 60)
    finally:
        worker.stop()
    assert service == "postboard-worker"
    ours = [(s, span) for s, span in spans_received(httpserver) if span.trace_id.hex() == trace_id]
    (server,) = [span for s, span in ours if s == "postboard-web" and span.kind == 2]  # SERVER
    assert server.parent_span_id.hex() == parent
    (publish,) = [span for s, span in ours if span.name == "apply_async/cache.refresh_user"]
    assert publish.parent_span_id == server.span_id
    assert run.parent_span_id == publish.span_id
    web_sql = [
        span
        for s, span in ours
        if s == "postboard-web" and span.parent_span_id == server.span_id and span.kind == 3
    ]
    assert web_sql, "the request's SQL and Redis calls, exported as client spans"
    assert any(span.parent_span_id == run.span_id for s, span in ours if s == "postboard-worker")
