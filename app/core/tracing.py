"""Tracing with OpenTelemetry: one set-up per process, after fork (docs/tracing.md).

    setup_tracing(role, flask_app=app)   gunicorn's post_worker_init, Celery's worker_process_init
                                         (prefork) or worker_init (solo, threads), beat_init, the
                                         outbox relay

Always on: an SDK TracerProvider, the request's span around the one pipeline (a W3C
`traceparent` continues the caller's trace; a missing or malformed one starts a new one) and the
Celery instrumentation (the publish injects `traceparent` into the message headers, the worker's
run continues it). So every log line of a request, and of each task it caused, carries one
`trace_id` (app/core/logging.py).

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) set, spans are recorded and exported
over OTLP/HTTP (a BatchSpanProcessor: its thread starts here, hence after fork); the request's span
is the Flask instrumentation's, and SQLAlchemy and Redis are instrumented too. With it unset,
nothing records: the request's span is a bare non-recording one (the SDK still makes valid ids and
propagates them), no SQL or Redis instrumentation, no exporter, no thread (bench/tracing.py).
The SDK reads the other standard OTEL_* variables itself (OTEL_TRACES_SAMPLER, OTEL_BSP_*,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES, ...); OTEL_SDK_DISABLED=true sets nothing up.

Nothing here runs at import: opentelemetry is imported by `setup_tracing` (or `preload`), so the
processes that never trace (the CLI) never load it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.trace import Link, SpanKind, Tracer
    from opentelemetry.util.types import Attributes

# The standard variables (the SDK's exporter reads the same ones to build its URL).
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Every variable this module reads (the SDK reads these and the other OTEL_* ones too).
VARIABLES = (*ENDPOINT_VARIABLES, "OTEL_SERVICE_NAME", "OTEL_SDK_DISABLED")
# What set-up imports: loaded in gunicorn's master before the fork, each worker inherits them.
_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.instrumentation.flask",
    "opentelemetry.instrumentation.celery",
)


@dataclass
class Tracing:
    """What `setup_tracing` set up in this process."""

    provider: TracerProvider
    exporting: bool
    service_name: str


_current: Tracing | None = None


def export_endpoint() -> str | None:
    """The OTLP endpoint spans go to, or None: export off."""
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    return traces or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None


def service_name(role: str) -> str:
    return os.environ.get("OTEL_SERVICE_NAME", "").strip() or f"postboard-{role}"


def disabled() -> bool:
    """OTEL_SDK_DISABLED=true: no set-up at all (no trace ids in the logs either)."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def preload() -> None:
    """Import what set-up uses, without setting anything up (no thread, no socket): a forking
    parent calls it so that its children do not each pay for the import."""
    for module in _MODULES:
        importlib.import_module(module)


def current() -> Tracing | None:
    return _current


def setup_tracing(
    role: str, *, flask_app: Flask | None = None, exporter: SpanExporter | None = None
) -> Tracing | None:
    """Set up tracing for this process, once (a later call only instruments a new `flask_app`).

    `flask_app`: the app this process serves or runs tasks for (its engines are traced when
    exporting). `exporter` replaces the OTLP one and turns export on (tests: the SDK's
    InMemorySpanExporter).
    """
    global _current
    if disabled():
        return None
    if _current is None:
        _current = _start(role, exporter, flask_app)
    if flask_app is not None and getattr(flask_app, "extensions", {}).get("role") == "web":
        instrument_flask(flask_app, _current)
    return _current


def _start(role: str, exporter: SpanExporter | None, flask_app: Flask | None) -> Tracing:
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporting = exporter is not None or export_endpoint() is not None
    name = service_name(role)
    resource = Resource.create({"service.name": name})
    if not exporting:
        # Nothing records, whatever the caller's sampled flag says: a recording span with no
        # processor would still cost its attributes. Ids are still made and propagated.
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    else:
        provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER, else parent-based
        provider.sampler = cast("Sampler", NoOrphanClients(provider.sampler))
        processor_exporter = exporter if exporter is not None else _otlp_exporter()
        provider.add_span_processor(BatchSpanProcessor(processor_exporter))
        _instrument_clients(provider, flask_app)
    CeleryInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
    # The global provider, for code that asks `trace.get_tracer` (the SDK allows one per
    # process; a test's provider, passed with its exporter, stays its own).
    if exporter is None and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return Tracing(provider, exporting, name)


def _otlp_exporter() -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # URL, headers and timeout: the OTEL_EXPORTER_OTLP_* variables


def _instrument_clients(provider: TracerProvider, flask_app: Flask | None) -> None:
    """SQL and Redis spans, only when exporting. The app's engines exist already (built before
    the fork); engines made later (the relay's own) are instrumented as they are created."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    engines: list[Any] = []
    sqlalchemy = flask_app.extensions.get("sqlalchemy") if flask_app is not None else None
    if flask_app is not None and sqlalchemy is not None:
        with flask_app.app_context():
            engines = list(sqlalchemy.engines.values())
    SQLAlchemyInstrumentor().instrument(
        tracer_provider=provider, engines=engines, skip_dep_check=True
    )
    RedisInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)


def instrument_flask(flask_app: Flask, tracing: Tracing) -> None:
    """Around the one request pipeline (app/core/pipeline.py), adding no step of its own.

    Exporting: the Flask instrumentation, its before hook moved first and its teardown last, so
    the span covers every step (the rate limit's round trip and a refusal included). Export
    off: a WSGI wrapper that only continues or starts the trace, since the instrumentation
    gathers its attributes and metrics whether or not the span records (bench/tracing.py).
    """
    if getattr(flask_app, "_postboard_traced", False):
        return
    flask_app._postboard_traced = True  # type: ignore[attr-defined]
    if not tracing.exporting:
        tracer = tracing.provider.get_tracer(__name__)
        flask_app.wsgi_app = _continue_trace(flask_app.wsgi_app, tracer)  # type: ignore[method-assign]
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor.instrument_app(
        flask_app, tracer_provider=tracing.provider, enable_commenter=False
    )
    hook: Any = flask_app._before_request  # type: ignore[attr-defined]
    befores = flask_app.before_request_funcs[None]
    befores.insert(0, befores.pop(befores.index(hook)))
    teardown: Any = flask_app._teardown_request  # type: ignore[attr-defined]
    teardowns = flask_app.teardown_request_funcs[None]  # run in reverse: the first runs last
    teardowns.insert(0, teardowns.pop(teardowns.index(teardown)))


def _continue_trace(wsgi_app: Callable[..., Any], tracer: Tracer) -> Callable[..., Any]:
    """The request in a span that continues the caller's `traceparent` (or starts a trace):
    non-recording, its ids in the logs and in the tasks the request publishes."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract
    from opentelemetry.propagators.textmap import Getter

    class EnvironGetter(Getter[dict[str, Any]]):
        def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
            value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
            return [value] if value is not None else None

        def keys(self, carrier: dict[str, Any]) -> list[str]:
            return []

    getter = EnvironGetter()
    server = trace.SpanKind.SERVER

    def traced(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        parent = extract(environ, getter=getter)
        span = tracer.start_span("request", context=parent, kind=server)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            return wsgi_app(environ, start_response)
        finally:
            otel_context.detach(token)

    return traced


def flush_tracing() -> None:
    """Export what is still buffered (a process about to exit: a forked child skips atexit)."""
    if _current is not None and _current.exporting:
        _current.provider.force_flush()


def reset_tracing() -> None:
    """Undo `setup_tracing` (tests): uninstrument, flush and stop the provider."""
    global _current
    if _current is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().uninstrument()
    if _current.exporting:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        SQLAlchemyInstrumentor().uninstrument()
        RedisInstrumentor().uninstrument()
    _current.provider.shutdown()
    _current = None


class NoOrphanClients:
    """A sampler (wrapping the configured one) that drops SQL and Redis client spans with no
    parent: the broker's housekeeping and the relay's polling, outside any request or task,
    would otherwise each be a trace of one span."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        from opentelemetry.sdk.trace.sampling import Decision, SamplingResult
        from opentelemetry.trace import SpanKind, get_current_span

        parent = get_current_span(parent_context).get_span_context()
        if kind == SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"NoOrphanClients{{{self.delegate.get_description()}}}"
