"""What tracing costs a request: not set up at all, set up with export off, export on.

    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://... \\
        .venv/bin/python -m bench.tracing [--rounds 5] [--requests 2000]

In process, without an HTTP server (as bench/request_cost.py, whose app and requests it reuses:
production shape, rate limiting on with limits out of reach, JSON access lines to /dev/null,
Prometheus in multiprocess mode): CPU microseconds per request (process time, best of three
passes, the exporter's thread included) for a warm authenticated GET /api/users/{id} (cached) and
an authenticated PATCH /api/posts/{id}, each variant in a fresh interpreter:

    none         setup_tracing never called (tracing as it was before #19)
    export off   setup_tracing("web") with no OTEL_EXPORTER_OTLP_ENDPOINT: what runs by default
    export on    OTEL_EXPORTER_OTLP_ENDPOINT naming a local sink (a thread of this process that
                 answers every POST /v1/traces with 200): HTTP, SQL and Redis spans, recorded,
                 batched and sent as OTLP/HTTP protobuf

Last, export off, the request's span alone (`--micro`: the WSGI wrapper around an app that
does nothing, wall time per call), the part of "export off" a benchmark of whole requests cannot
resolve from the noise of two shared cores.

The variants alternate within each round (the order rotated), so a noisy neighbour on the two
cores hits them alike; the medians over rounds and their ratios to "none" are printed. The
database needs users (`flask seed --users 200 --posts-per-user 0`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VARIANTS = ("none", "export off", "export on")
REQUESTS = ("auth GET", "auth PATCH")


def measure(variant: str, request: str, requests: int) -> float:
    from bench.request_cost import _app, _environs, caller

    app = _app(request)
    if variant != "none":  # as gunicorn's post_worker_init: before the app's first request
        from app.core.tracing import setup_tracing

        state = setup_tracing("web", flask_app=app)
        assert state is not None
        assert state.exporting == (variant == "export on")
    environs = _environs(app, request)

    once = caller(app, environs)

    for k in range(len(environs) * 2):  # warm: the cache filled, the first batches sent
        once(k)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for k in range(requests):
            once(k)
        if variant == "export on":  # what was recorded is sent within the measured time
            from app.core.tracing import flush_tracing

            flush_tracing()
        best = min(best, (time.process_time() - started) * 1e6 / requests)
    return best


def micro(calls: int = 100_000) -> str:
    """Export off, what the request's span adds alone: the wrapper around a WSGI app that does
    nothing, with and without a `traceparent` (wall time, best of three)."""
    from app.core import tracing

    state = tracing.setup_tracing("web")
    assert state is not None
    assert not state.exporting
    tracer = state.provider.get_tracer("bench")

    def bare(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return [b""]

    wrapped = tracing._continue_trace(bare, tracer)
    sent = {"HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    results = []
    for app, environ in ((bare, sent), (wrapped, {}), (wrapped, sent)):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                app(environ, None)
            best = min(best, (time.perf_counter() - started) * 1e6 / calls)
        results.append(best)
    return (
        f"span wrapper alone: {results[1] - results[0]:.1f} us (new trace), "
        f"{results[2] - results[0]:.1f} us (continuing a traceparent)"
    )


class _Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Sink.received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def run_variant(variant: str, request: str, requests: int, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "bench.tracing", "--variant", variant, "--request", request]
    run = subprocess.run(
        [*command, "--requests", str(requests)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        sys.exit(f"{variant} / {request} failed:\n{run.stderr[-3000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--request", choices=REQUESTS)
    parser.add_argument("--micro", action="store_true")
    args = parser.parse_args()
    if args.micro:
        print(micro())
        return
    if args.variant:
        print(f"{measure(args.variant, args.request, args.requests):.1f}")
        return
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP")}
    costs: dict[tuple[str, str], list[float]] = {(v, r): [] for v in VARIANTS for r in REQUESTS}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as metrics_dir:
        base["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        exporting = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"}
        for round_ in range(args.rounds):
            for request in REQUESTS:
                order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
                for variant in order:
                    env = exporting if variant == "export on" else base
                    cost = run_variant(variant, request, args.requests, env)
                    costs[(variant, request)].append(cost)
                    print(
                        f"  round {round_ + 1} {request:10} {variant:10} {cost:7.1f} us", flush=True
                    )
    sink.shutdown()
    print(f"\nmedian CPU per request over {args.rounds} rounds (sink got {_Sink.received} exports)")
    for request in REQUESTS:
        none = statistics.median(costs[("none", request)])
        for variant in VARIANTS:
            cost = statistics.median(costs[(variant, request)])
            print(f"  {request:10} {variant:10} {cost:7.1f} us   x{cost / none:.3f} of none")
    command = [sys.executable, "-m", "bench.tracing", "--micro"]
    micro_run = subprocess.run(command, env=base, capture_output=True, text=True, check=True)
    print(f"export off, {micro_run.stdout.strip()}")


if __name__ == "__main__":
    main()
