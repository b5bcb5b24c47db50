"""The speed benchmark of issue #12: one command, five variants, interleaved rounds, wrk.

    (a) bench/bare_app.py: a bare Flask route returning a constant ~200-byte JSON (the ceiling)
    (b) warm authenticated GET /api/users/{id}, random ids over the seeded users, cache on
    (c) the same, anonymous
    (d) (b) with the cache off (CACHE_ENABLED=false)
    (e) authenticated PATCH /api/posts/{id}, random posts of the caller

Every server is gunicorn with the project's gunicorn.conf.py (-w 3 -k sync), production mode,
rate limiting on with limits out of reach, JSON access lines and Prometheus metrics
(multiprocess) on. Needs wrk (`apt-get install wrk`; it is not a CI dependency). Intended on
PostgreSQL + Redis, on a database of its own (the run seeds users into it):

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_pipeline_bench \\
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python -m bench.read_path

`--root DIR` serves another checkout (with its own .venv), e.g. the code before a change.
Targets (issue #12): (b) >= 0.6 x (a), (c) >= 0.7 x (a), (b) >= 3 x (d), p99(b) <= 2 x p99(a).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import bench.limiter_overhead as servers
from bench.limiter_overhead import migrate, production_env, seed_ids, start
from bench.loadgen import WRK, median, run_wrk

PASSWORD = "bench-password-1"  # noqa: S105  # nosec B105 # a throwaway bench account
OUT_OF_REACH = "100000000/minute"
LABELS = {
    "a": "(a) bare Flask",
    "b": "(b) auth GET user",
    "c": "(c) anon GET user",
    "d": "(d) (b), cache off",
    "e": "(e) auth PATCH post",
}


def call(port: int, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # http://127.0.0.1 only
        return json.load(response)


def bench_account(port: int, posts: int) -> tuple[str, list[str]]:
    """A user of the benchmark's own: (access token, ids of `posts` posts of theirs)."""
    name = f"bench{random.randrange(10**9)}"
    user = call(
        port,
        "POST",
        "/api/users",
        {"email": f"{name}@example.test", "username": name, "password": PASSWORD},
    )["data"]
    token = call(
        port, "POST", "/api/auth/login", {"email": f"{name}@example.test", "password": PASSWORD}
    )["data"]["access_token"]
    ids = [
        call(
            port,
            "POST",
            f"/api/users/{user['id']}/posts",
            {"title": f"Post {i}", "body": "Benchmark body.", "status": "published"},
            token,
        )["data"]["id"]
        for i in range(posts)
    ]
    return token, ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--root", type=Path, default=servers.ROOT, help="checkout to serve")
    args = parser.parse_args()
    if not WRK:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    servers.ROOT = args.root.resolve()
    servers.BIN = servers.ROOT / ".venv" / "bin"

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        base = production_env(
            work,
            RATELIMIT_ANONYMOUS=OUT_OF_REACH,
            RATELIMIT_AUTHENTICATED=OUT_OF_REACH,
            PROMETHEUS_MULTIPROC_DIR=str(work / "metrics"),
        )
        os.makedirs(work / "metrics")
        migrate(base)
        ports = {"a": 18401, "b": 18402, "d": 18403}
        envs = {"a": base, "b": {**base, "CACHE_ENABLED": "true"}, "d": {**base}}
        envs["d"]["CACHE_ENABLED"] = "false"
        for name, env in envs.items():
            app = "bench.bare_app:app" if name == "a" else "wsgi:app"
            proc = start(env, ports[name], work / f"{name}.log", app)
            stack.callback(proc.terminate)
        ports["c"] = ports["e"] = ports["b"]  # (c) and (e) on (b)'s server
        ids = seed_ids({**base, "BENCH_PROBE_PORT": str(ports["d"])}, args.users)
        token, post_ids = bench_account(ports["b"], args.posts)
        auth = {"Authorization": f"Bearer {token}"}
        users = [f"/api/users/{i}" for i in ids]
        posts = [f"/api/posts/{i}" for i in post_ids]
        patch = {"method": "PATCH", "body": json.dumps({"title": "Edited by the benchmark"})}
        plans: dict[str, dict[str, Any]] = {
            "a": {"paths": users},
            "b": {"paths": users, "headers": auth},
            "c": {"paths": users},
            "d": {"paths": users, "headers": auth},
            "e": {"paths": posts, "headers": {**auth, "Content-Type": "application/json"}, **patch},
        }
        # Warm: every id read once through (b)'s server, so the measured reads hit the cache.
        for name in ("a", "b", "d", "e"):
            run_wrk(ports[name], seconds=max(3.0, len(users) / 1000), connections=8, **plans[name])
        results: dict[str, list] = {name: [] for name in plans}
        for _ in range(args.rounds):
            for name, plan in plans.items():
                seconds, connections = args.seconds, args.connections
                results[name].append(
                    run_wrk(ports[name], seconds=seconds, connections=connections, **plan)
                )
        report(args, base, results)


def report(args: argparse.Namespace, base: dict[str, str], results: dict[str, list]) -> None:
    backend = "postgres+redis" if "postgresql" in base["DATABASE_URL"] else "sqlite+disk cache"
    print(
        f"{args.root}: {backend}, {args.rounds} interleaved rounds x {args.seconds}s, "
        f"{args.connections} connections, wrk -t1, gunicorn -w {base['WEB_CONCURRENCY']} -k sync"
    )
    rps, p99 = {}, {}
    for name, runs in results.items():
        rps[name] = median([r.rps for r in runs])
        p50 = median([r.percentile(50) for r in runs])
        p99[name] = median([r.percentile(99) for r in runs])
        errors = sum(r.errors for r in runs)
        print(
            f"  {LABELS[name]:21} {rps[name]:7.0f} req/s  p50 {p50:6.2f} ms  "
            f"p99 {p99[name]:6.2f} ms  errors {errors}"
        )
    print(
        f"  (b)/(a) = {rps['b'] / rps['a']:.2f} (target 0.6)   "
        f"(c)/(a) = {rps['c'] / rps['a']:.2f} (target 0.7)   "
        f"(b)/(d) = {rps['b'] / rps['d']:.2f} (target 3)   "
        f"p99(b)/p99(a) = {p99['b'] / p99['a']:.2f} (target <= 2)"
    )


if __name__ == "__main__":
    main()
