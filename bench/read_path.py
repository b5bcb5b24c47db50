"""Read-path benchmark: one command, three servers side by side, interleaved rounds.

    (a) a bare Flask app returning a constant ~200-byte JSON (the ceiling), same gunicorn config
    (b) warm GET /api/users/{id}, random ids, cache on
    (c) the same with the cache off (CACHE_ENABLED=false)

(b) and (c) run in production mode with rate limiting (limit set out of reach) and JSON request
logging on, as deployed. Intended on PostgreSQL + Redis:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postboard_bench \\
    REDIS_URL=redis://127.0.0.1:6379/7 .venv/bin/python -m bench.read_path

Targets (issue #5): (b) >= 0.6 x (a), (b) >= 1.6 x (c), p99 of (b) < 15 ms at 32 connections.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.limiter_overhead import migrate, production_env, seed_ids, start
from bench.loadgen import measure, median, run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--users", type=int, default=5000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        base = production_env(work)
        migrate(base)
        ports = {"a": 18401, "b": 18402, "c": 18403}
        variants = {
            "a": ("bench.bare_app:app", base),
            "b": ("wsgi:app", {**base, "CACHE_ENABLED": "true"}),
            "c": ("wsgi:app", {**base, "CACHE_ENABLED": "false"}),
        }
        for name, (app, env) in variants.items():
            proc = start(env, ports[name], work / f"{name}.log", app)
            stack.callback(proc.terminate)
        ids = seed_ids({**base, "BENCH_PROBE_PORT": str(ports["c"])}, args.users)
        paths = [f"/api/users/{i}" for i in ids]
        # Warm (b): every id once, so the measured rounds read from the cache.
        run(ports["b"], paths, seconds=max(3.0, len(paths) / 1500), connections=8)
        run(ports["a"], paths, seconds=1.0, connections=8)
        run(ports["c"], paths, seconds=1.0, connections=8)
        results: dict[str, list] = {name: [] for name in ports}
        for _ in range(args.rounds):
            for name in ("a", "b", "c"):
                results[name].append(
                    measure(ports[name], paths, seconds=args.seconds, connections=args.connections)
                )
        backend = "postgres+redis" if "postgresql" in base["DATABASE_URL"] else "sqlite+disk cache"
        print(
            f"read path, {backend}, {args.rounds} interleaved rounds x {args.seconds}s, "
            f"{args.connections} connections, gunicorn -w {base['WEB_CONCURRENCY']} -k sync, "
            f"load by {results['a'][0].tool}"
        )
        labels = {"a": "(a) bare Flask", "b": "(b) cached GET", "c": "(c) uncached GET"}
        rps = {}
        for name in ("a", "b", "c"):
            rps[name] = median([r.rps for r in results[name]])
            p50 = median([r.percentile(50) for r in results[name]])
            p99 = median([r.percentile(99) for r in results[name]])
            errors = sum(r.errors for r in results[name])
            print(
                f"  {labels[name]:17} {rps[name]:8.0f} req/s  p50 {p50:6.2f} ms  "
                f"p99 {p99:6.2f} ms  errors {errors}"
            )
        print(f"  (b)/(a) = {rps['b'] / rps['a']:.2f}   (b)/(c) = {rps['b'] / rps['c']:.2f}")


if __name__ == "__main__":
    main()
