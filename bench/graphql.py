"""GraphQL against REST (issue #17): one command, both side by side in interleaved rounds.

    (r) warm authenticated REST  GET /api/users/{id}
    (g) warm authenticated GraphQL `query U($id: ID!) { user(id: $id) { username } }` by GET
        (one document text, the id in `variables`: the parsed document is cached, as a client's
        repeated query is)

on one gunicorn (the project's gunicorn.conf.py, production mode, cache on, limits out of
reach, JSON access lines and multiprocess metrics on), random ids over the seeded users, every
id read once first (warm). Then, in process, the SQL statements of a page of users with five
posts each (`users(first: N) { ... posts(first: 5) { ... author { ... } } }`) for N = 2 and 20.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_gql_bench \\
    REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/python -m bench.graphql

Target: (g) >= 0.8 x (r) throughput; the statement count equal for 2 and 20 users. Beside the
throughput, the server's CPU per request (gunicorn's master and workers, from /proc), which
moves far less than throughput when other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

from bench.limiter_overhead import migrate, production_env, seed_ids, start
from bench.loadgen import WRK, measure, median
from bench.read_path import bench_account

OUT_OF_REACH = "100000000/minute"
QUERY = "query U($id: ID!) { user(id: $id) { username } }"
PAGE = """{ users(first: %d) { edges { node { id username posts(first: 5) {
  edges { node { id title author { id username } } } pageInfo { hasNextPage } } } } } }"""


def graphql_path(user_id: str) -> str:
    return "/graphql?" + urllib.parse.urlencode(
        {"query": QUERY, "variables": json.dumps({"id": user_id})}
    )


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by gunicorn `pid` and its workers (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:  # a worker that just exited
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        pending += [int(c) for c in children]
    return total


def statements(env: dict[str, str]) -> dict[int, int]:
    """SQL statements of PAGE for 2 and 20 users, each with 5 posts (written first)."""
    from sqlalchemy import event

    from app import create_app
    from app.core.security import Principal
    from app.extensions import db
    from app.posts.service import PostService
    from app.users.service import UserService

    app = create_app(
        {k: v for k, v in env.items() if k in ("DATABASE_URL",)} | {"APP_ENV": "development"}
    )
    with app.app_context():
        people, writer = UserService.from_app(), PostService.from_app()
        for i in range(20):
            name = f"gqlbench{os.getpid()}x{i}"
            user = people.register(
                {"email": f"{name}@example.test", "username": name, "password": "bench-pw-1234"}
            )
            actor = Principal(user_id=user.id, public_id=user.public_id)
            for j in range(5):
                writer.create(
                    user.public_id, {"title": f"P{j}", "status": "published"}, actor=actor
                )
        db.session.remove()
        engine = db.engine
    counts = {}
    client = app.test_client()
    for n in (2, 20):
        sent: list[str] = []

        def listener(*args: object, sent: list[str] = sent) -> None:
            sent.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", listener)
        response = client.post("/graphql", json={"query": PAGE % n})
        event.remove(engine, "before_cursor_execute", listener)
        if response.status_code != 200 or "errors" in response.get_json():
            raise SystemExit(response.get_data(as_text=True))
        counts[n] = len(sent)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        os.makedirs(work / "metrics")
        env = production_env(
            work,
            RATELIMIT_ANONYMOUS=OUT_OF_REACH,
            RATELIMIT_AUTHENTICATED=OUT_OF_REACH,
            CACHE_ENABLED="true",
            PROMETHEUS_MULTIPROC_DIR=str(work / "metrics"),
        )
        migrate(env)
        port = 18471
        proc = start(env, port, work / "web.log")
        stack.callback(proc.terminate)
        ids = seed_ids({**env, "BENCH_PROBE_PORT": str(port)}, args.users)
        token, _ = bench_account(port, 0)
        auth = {"Authorization": f"Bearer {token}"}
        plans = {
            "r": [f"/api/users/{i}" for i in ids],
            "g": [graphql_path(i) for i in ids],
        }
        for paths in plans.values():  # warm: every id once
            measure(port, paths, seconds=max(3.0, len(paths) / 500), connections=8, headers=auth)
        results: dict[str, list] = {name: [] for name in plans}
        cpu: dict[str, list[float]] = {name: [] for name in plans}  # server ms per request
        for _ in range(args.rounds):
            for name, paths in plans.items():
                before = server_cpu(proc.pid)
                result = measure(
                    port,
                    paths,
                    seconds=args.seconds,
                    connections=args.connections,
                    headers=auth,
                )
                results[name].append(result)
                cpu[name].append((server_cpu(proc.pid) - before) * 1000 / max(1, result.requests))
        counts = statements(env)
    rps = {name: median([r.rps for r in rs]) for name, rs in results.items()}
    p99 = {name: median([r.percentile(99) for r in rs]) for name, rs in results.items()}
    errors = {name: sum(r.errors for r in rs) for name, rs in results.items()}
    ms = {name: median(values) for name, values in cpu.items()}
    tool = "wrk" if WRK else "python loadgen"
    print(f"load: {tool}, {args.rounds} rounds x {args.seconds}s, {args.connections} connections")
    for name, label in (("r", "(r) REST GET /api/users/{id}"), ("g", "(g) GraphQL user(id)")):
        print(
            f"{label:30} {rps[name]:8.0f} req/s  p99 {p99[name]:.1f} ms  "
            f"server CPU {ms[name]:.2f} ms/request  errors {errors[name]}"
        )
        print(f"    rounds: {', '.join(f'{r.rps:.0f}' for r in results[name])} req/s")
    print(f"(g)/(r) = {rps['g'] / rps['r']:.2f}  (target >= 0.8)")
    print(f"server CPU per request (r)/(g) = {ms['r'] / ms['g']:.2f}  (the load-robust figure)")
    print(
        f"SQL statements, users(first: N) with 5 posts each: N=2: {counts[2]}, N=20: {counts[20]}"
    )


if __name__ == "__main__":
    main()
