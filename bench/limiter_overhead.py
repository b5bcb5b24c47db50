"""Overhead of the rate limiter per request: the same gunicorn config with RATELIMIT_ENABLED on
and off, side by side, interleaved rounds, one run.

    .venv/bin/python -m bench.limiter_overhead            # embedded default (memory limits)
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postboard_bench \
    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python -m bench.limiter_overhead

Workload: anonymous GET /api/users/{id} over random seeded ids (one indexed SELECT each), the
limit set far above what the run can reach so every request is counted but none refused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.loadgen import median, run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start(env: dict[str, str], port: int, log: Path, app: str = "wsgi:app") -> subprocess.Popen:
    """gunicorn serving `app` with the project's config; returns once /ready answers."""
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), app, "-c", "gunicorn.conf.py"],
        cwd=ROOT,
        env={**env, "PORT": str(port)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"{app} on {port} did not start: {log.read_text()[-2000:]}")


def production_env(work: Path, **overrides: str) -> dict[str, str]:
    """The environment of a benchmarked server: production mode, throwaway secrets and instance
    dir, rate limiting on with a limit no run reaches (so every request pays for the check)."""
    env = {
        **os.environ,
        "APP_ENV": "production",
        "SECRET_KEY": "bench-secret-" + "x" * 40,
        "JWT_SECRET_KEY": "bench-jwt-secret-" + "y" * 40,
        "INSTANCE_PATH": str(work),
        "CACHE_DIR": str(work / "cache"),
        "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "3"),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_ANONYMOUS": "100000000/minute",
        "TASKS_ENABLED": "false",
        **overrides,
    }
    env.setdefault("DATABASE_URL", f"sqlite:///{work / 'bench.sqlite3'}")
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def seed_ids(env: dict[str, str], users: int) -> list[str]:
    subprocess.run(
        [
            str(BIN / "flask"),
            "--app",
            "wsgi",
            "seed",
            "--users",
            str(users),
            "--posts-per-user",
            "0",
            "--password",
            "bench-password",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    import json

    ids: list[str] = []
    url = f"http://127.0.0.1:{env['BENCH_PROBE_PORT']}/api/users?per_page=100"
    while url and len(ids) < users:
        with urllib.request.urlopen(url, timeout=10) as response:
            page = json.load(response)
        ids += [u["id"] for u in page["data"]]
        cursor = page["meta"]["next_cursor"]
        url = url.split("?")[0] + f"?per_page=100&cursor={cursor}" if cursor else ""
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--users", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        base = production_env(work, LOG_LEVEL="WARNING")
        migrate(base)
        ports = {"on": 18301, "off": 18302}
        servers = {}
        for name, enabled in (("on", "true"), ("off", "false")):
            env = {**base, "RATELIMIT_ENABLED": enabled}
            servers[name] = start(env, ports[name], work / f"{name}.log")
            stack.callback(servers[name].terminate)
        ids = seed_ids({**base, "BENCH_PROBE_PORT": str(ports["off"])}, args.users)
        paths = [f"/api/users/{i}" for i in ids]
        for name in ports:  # warm both
            run(ports[name], paths, seconds=1.0, connections=args.connections)
        results: dict[str, list] = {"on": [], "off": []}
        for _ in range(args.rounds):
            for name in ("off", "on"):
                results[name].append(
                    run(ports[name], paths, seconds=args.seconds, connections=args.connections)
                )
        backend = "postgres+redis" if "postgresql" in base["DATABASE_URL"] else "sqlite+memory"
        print(
            f"limiter overhead, {backend}, {args.rounds} interleaved rounds x {args.seconds}s, "
            f"{args.connections} connections, gunicorn -w {base['WEB_CONCURRENCY']}"
        )
        summary = {}
        for name in ("off", "on"):
            rps = median([r.rps for r in results[name]])
            p50 = median([r.percentile(50) for r in results[name]])
            p99 = median([r.percentile(99) for r in results[name]])
            errors = sum(r.errors for r in results[name])
            summary[name] = rps
            print(
                f"  limiter {name:3}: {rps:8.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                f"errors {errors}"
            )
        ratio = summary["on"] / summary["off"]
        per_request_us = (
            (1 / summary["on"] - 1 / summary["off"]) * 1e6 * int(base["WEB_CONCURRENCY"])
        )
        print(
            f"  on/off throughput ratio: {ratio:.3f}  (~{per_request_us:.0f} us of worker time "
            f"per request)"
        )


if __name__ == "__main__":
    main()
