"""In-process CPU cost of one cached read, by path, without an HTTP server or a load generator.

    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://... \\
        .venv/bin/python -m bench.request_cost [--requests 5000]

Calls each app's WSGI callable directly (a prebuilt environ per id, the body drained as a
server would) in production mode: rate limiting on with a limit out of reach, the cache on,
JSON logging to /dev/null, Prometheus metrics in multiprocess mode. Prints CPU microseconds per
`GET /api/users/{id}` (process time, best of three passes) for:

    bare Flask      bench/bare_app.py, the ceiling
    fast lane       anonymous cached read answered by app/core/fast_reads.py
    fast lane, no log   the same with the access line off
    full path       the same request through Flask (FAST_READS_ENABLED=false)

Each variant runs in a fresh interpreter. Run it against a database that already holds users
(bench.read_path seeds some); Redis round trips count as the client's CPU only (the server's
is not included), so this complements bench.read_path rather than replacing it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

VARIANTS = ("bare Flask", "fast lane", "fast lane, no log", "full path")


def _app(variant: str) -> Any:
    if variant == "bare Flask":
        from bench.bare_app import app

        return app
    import logging

    from app import create_app
    from app.core.logging import configure_logging

    app = create_app(
        {
            "APP_ENV": "testing",
            "SQLALCHEMY_DATABASE_URI": os.environ["DATABASE_URL"],
            "REDIS_URL": os.environ.get("REDIS_URL") or None,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_ANONYMOUS": "100000000/minute",
            "CACHE_ENABLED": True,
            "FAST_READS_ENABLED": variant != "full path",
        }
    )
    configure_logging("WARNING" if variant == "fast lane, no log" else "INFO")
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115
    return app


def measure(variant: str, requests: int) -> float:
    from werkzeug.test import EnvironBuilder

    app = _app(variant)
    if variant == "bare Flask":
        ids = ["0b7f2e8a-7a7e-4a65-9a59-3d7f1a0c9a11"]
    else:
        ids = [u["id"] for u in app.test_client().get("/api/users?per_page=100").json["data"]]
        if not ids:
            sys.exit("no users in this database: run bench.read_path (or flask seed) first")
    environs = [
        EnvironBuilder(
            path=f"/api/users/{i}", environ_base={"REMOTE_ADDR": "127.0.0.1"}
        ).get_environ()
        for i in ids
    ]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    def once(k: int) -> None:
        body = app(dict(environs[k % len(environs)]), start_response)
        b"".join(body)
        close = getattr(body, "close", None)
        if close is not None:
            close()

    for k in range(len(ids) * 2):  # the first pass fills the cache (the full path's misses)
        once(k)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for k in range(requests):
            once(k)
        best = min(best, (time.process_time() - started) * 1e6 / requests)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--variant", choices=VARIANTS)
    args = parser.parse_args()
    if args.variant:
        print(f"{measure(args.variant, args.requests):.1f}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as metrics_dir:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        for variant in VARIANTS:
            command = [sys.executable, "-m", "bench.request_cost", "--variant", variant]
            run = subprocess.run(
                [*command, "--requests", str(args.requests)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            cost = float(run.stdout.strip().splitlines()[-1])
            print(f"  {variant:18} {cost:7.1f} us CPU per GET")


if __name__ == "__main__":
    main()
