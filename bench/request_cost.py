"""In-process CPU cost of one request, by path, without an HTTP server or a load generator.

    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://... \\
        .venv/bin/python -m bench.request_cost [--requests 3000] [--profile "auth GET"]

Calls each app's WSGI callable directly (a prebuilt environ per request, the body drained as a
server would) in production shape: rate limiting on with limits out of reach, the cache on
(except where said), JSON logging to /dev/null, Prometheus metrics in multiprocess mode. Prints
CPU microseconds per request (process time, best of three passes) for:

    bare Flask      bench/bare_app.py, the ceiling
    anon GET        warm anonymous GET /api/users/{id}
    auth GET        warm authenticated GET /api/users/{id}
    auth GET, no cache   the same with CACHE_ENABLED=false
    auth PATCH      authenticated PATCH /api/posts/{id}
    auth GraphQL    warm authenticated GET /graphql, bench/graphql.py's `user(id)` query

Each variant runs in a fresh interpreter, in the current directory's checkout (run it from an
older checkout to measure "before"). `--profile VARIANT` prints that variant's cProfile instead,
`--steps VARIANT` the time of each pipeline step.
Redis and PostgreSQL time counts only as the client's CPU, so this complements bench.read_path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

VARIANTS = (
    "bare Flask",
    "anon GET",
    "auth GET",
    "auth GET, no cache",
    "auth PATCH",
    "auth GraphQL",
)
# bench/graphql.py's query: one document text, the id in `variables`.
GRAPHQL_QUERY = "query U($id: ID!) { user(id: $id) { username } }"
OUT_OF_REACH = "100000000/minute"


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
            "RATELIMIT_ANONYMOUS": OUT_OF_REACH,
            "RATELIMIT_AUTHENTICATED": OUT_OF_REACH,
            "RATELIMIT_REGISTER": OUT_OF_REACH,
            "RATELIMIT_LOGIN": OUT_OF_REACH,
            "CACHE_ENABLED": variant != "auth GET, no cache",
            "TASKS_ENABLED": False,
        }
    )
    configure_logging("INFO")
    logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115
    return app


def _environs(app: Any, variant: str) -> list[dict[str, Any]]:
    from werkzeug.test import EnvironBuilder

    base = {"REMOTE_ADDR": "127.0.0.1"}
    if variant == "bare Flask":
        paths = ["/api/users/0b7f2e8a-7a7e-4a65-9a59-3d7f1a0c9a11"]
        return [EnvironBuilder(path=p, environ_base=base).get_environ() for p in paths]
    client = app.test_client()
    ids = [u["id"] for u in client.get("/api/users?per_page=100").json["data"]]
    if not ids:
        sys.exit("no users in this database: run bench.read_path (or flask seed) first")
    name = f"cost{os.getpid()}{int(time.time())}"
    body = {"email": f"{name}@example.test", "username": name, "password": "cost-password-1"}
    me = client.post("/api/users", json=body).json["data"]
    login = {"email": body["email"], "password": body["password"]}
    token = client.post("/api/auth/login", json=login).json["data"]["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    if variant == "anon GET":
        return [
            EnvironBuilder(path=f"/api/users/{i}", environ_base=base).get_environ() for i in ids
        ]
    if variant == "auth GraphQL":
        query = {"query": GRAPHQL_QUERY}
        return [
            EnvironBuilder(
                path="/graphql",
                query_string={**query, "variables": json.dumps({"id": i})},
                environ_base=base,
                headers=auth,
            ).get_environ()
            for i in ids
        ]
    if variant.startswith("auth GET"):
        return [
            EnvironBuilder(path=f"/api/users/{i}", environ_base=base, headers=auth).get_environ()
            for i in ids
        ]
    posts = [
        client.post(
            f"/api/users/{me['id']}/posts",
            json={"title": f"P{i}", "body": "b", "status": "published"},
            headers=auth,
        ).json["data"]["id"]
        for i in range(50)
    ]
    edit = json.dumps({"title": "Edited"})
    return [
        EnvironBuilder(
            path=f"/api/posts/{p}",
            method="PATCH",
            data=edit,
            content_type="application/json",
            environ_base=base,
            headers=auth,
        ).get_environ()
        for p in posts
    ]


def caller(app: Any, environs: list[dict[str, Any]]) -> Any:
    """`once(k)`: the k-th request (round robin over `environs`) straight through the WSGI app."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        return None

    def once(k: int) -> None:
        environ = dict(environs[k % len(environs)])
        if "wsgi.input" in environ:  # a body: a fresh stream each time
            import io

            data = environ["wsgi.input"]
            data.seek(0)
            environ["wsgi.input"] = io.BytesIO(data.read())
        body = app(environ, start_response)
        b"".join(body)
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return once


def _runner(variant: str) -> Any:
    app = _app(variant)
    environs = _environs(app, variant)
    once = caller(app, environs)
    for k in range(len(environs) * 2):  # the first pass fills the cache
        once(k)
    return once


def measure(variant: str, requests: int) -> float:
    once = _runner(variant)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for k in range(requests):
            once(k)
        best = min(best, (time.process_time() - started) * 1e6 / requests)
    return best


def profile(variant: str, requests: int) -> None:
    import cProfile
    import pstats

    once = _runner(variant)
    profiler = cProfile.Profile()
    profiler.enable()
    for k in range(requests):
        once(k)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(45)


# (file, function) of the pipeline's steps and the layers around them, for `--steps`.
STEPS = (
    ("app.py", "wsgi_app", "Flask, whole request"),
    ("pipeline.py", "before", "pipeline.before"),
    ("guard.py", "identify", "  identify (token, memoised)"),
    ("limiting.py", "round_trip", "  limit + reads: 1 Redis round trip"),
    ("app.py", "dispatch_request", "view (smorest wrappers included)"),
    ("guard.py", "verify", "  @authenticated check"),
    ("cache.py", "read", "  cache GET: 2nd Redis round trip"),
    ("service.py", "update", "  service update (DB)"),
    ("http.py", "single_json", "  response body"),
    ("http.py", "single", "  response body"),
    ("pipeline.py", "finish", "pipeline.finish"),
    ("http_security.py", "security_headers", "  security headers"),
    ("http_security.py", "compress", "  compress"),
    ("http_security.py", "cors", "  cors"),
    ("pipeline.py", "_record", "  access line + metrics"),
)


def steps(variant: str, requests: int) -> None:
    """Where a request's time goes, by pipeline step (cProfile, cumulative, per request)."""
    import cProfile
    import pstats

    once = _runner(variant)
    profiler = cProfile.Profile()
    profiler.enable()
    for k in range(requests):
        once(k)
    profiler.disable()
    totals: dict[tuple[str, str], float] = {}
    for (path, _line, name), row in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        key = (os.path.basename(path), name)
        totals[key] = totals.get(key, 0.0) + row[3]
    whole = totals[("app.py", "wsgi_app")]
    print(f"{variant}: cProfile, {requests} requests (times inflated by the profiler)")
    for file, function, label in STEPS:
        if (file, function) in totals:
            spent = totals[(file, function)]
            print(f"  {label:38} {spent / requests * 1e6:7.0f} us  {spent / whole:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--profile", choices=VARIANTS)
    parser.add_argument("--steps", choices=VARIANTS)
    args = parser.parse_args()
    if args.steps:
        steps(args.steps, args.requests)
        return
    if args.profile:
        profile(args.profile, args.requests)
        return
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
            print(f"  {variant:20} {cost:7.1f} us CPU per request")


if __name__ == "__main__":
    main()
