"""In-process cost of one cached read, with and without parts of the production middleware.

    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://... \\
        .venv/bin/python -m bench.request_cost [--requests 2000]

Runs the app through Flask's test client (no HTTP server, no load generator): rate limiting on
with a limit out of reach, the cache on, JSON logging to /dev/null, Prometheus metrics in
multiprocess mode. Prints milliseconds per cached `GET /api/users/{id}` for: everything on; the
JSON log line off; the metrics hooks off. Each variant is a fresh interpreter, so the three are
measured the same way; run it against a database that already holds users (bench.read_path
seeds some).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("all on", "no JSON log", "no metrics")


def measure(variant: str, requests: int) -> float:
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
        }
    )
    if variant != "no JSON log":
        configure_logging("INFO")
        logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115
    if variant == "no metrics":
        hooks = app.before_request_funcs[None]
        app.before_request_funcs[None] = [f for f in hooks if f.__name__ != "_start_timer"]
        after = app.after_request_funcs[None]
        app.after_request_funcs[None] = [f for f in after if "metrics" not in f.__module__]
    client = app.test_client()
    ids = [u["id"] for u in client.get("/api/users?per_page=100").get_json()["data"]]
    if not ids:
        sys.exit("no users in this database: run bench.read_path (or flask seed) first")
    for user_id in ids:  # warm the cache
        client.get(f"/api/users/{user_id}")
    started = time.perf_counter()
    for k in range(requests):
        client.get(f"/api/users/{ids[k % len(ids)]}")
    return (time.perf_counter() - started) * 1000 / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--variant", choices=VARIANTS)
    args = parser.parse_args()
    if args.variant:
        print(f"{measure(args.variant, args.requests):.3f}")
        return
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as metrics_dir:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        for variant in VARIANTS:
            out = (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bench.request_cost",
                        "--variant",
                        variant,
                        "--requests",
                        str(args.requests),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            print(f"  {variant:12} {float(out):6.3f} ms per cached GET")


if __name__ == "__main__":
    main()
