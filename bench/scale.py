"""Data at scale (issue 7): seeding speed, list latency at depth, the cost of `meta.total`, and
the slug backfill under concurrent writers. One command, PostgreSQL only:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_scale \\
        .venv/bin/python -m bench.scale                 # 100,000 users x 10 posts
    ... -m bench.scale --users 20000 --reps 9 --no-backfill --no-record   # a quick look

Each phase works in a scratch database created beside DATABASE_URL and dropped afterwards:

1. migrate to head, `flask seed --users N --posts-per-user M` (rows/s as the command reports
   them, and wall time), VACUUM ANALYZE (what autovacuum would do shortly after a bulk load).
2. two gunicorn servers (one worker each, production mode): the default configuration (total
   estimated above PAGINATION_EXACT_COUNT_LIMIT) and PAGINATION_EXACT_COUNT_LIMIT=0 (always an
   exact count). One keep-alive client, requests in sequence, variants interleaved round by
   round, medians: offset page 1 vs page 5,000 (per_page 20: offset 100,000), cursor near the
   top (page 1's next_cursor) vs cursor at the same depth (page 5,000's next_cursor, made by
   the app's own cursor encoder); `meta.total` exact vs estimated, over HTTP and as bare SQL.
3. backfill: a second database seeded at revision 0002 (no slug column), upgraded to 0003
   (expand: nullable slug, every row NULL), then `flask backfill run post_slugs` while writer
   threads update posts in short transactions; half of them aim at the rows just ahead of the
   backfill's checkpoint (the rows its next batch locks), half anywhere. Every writer UPDATE is
   timed: its time beyond the uncontended median is lock wait. Reports backfill rows/s and the
   longest single writer wait.

Results are printed and written to bench/RESULTS.md (section "Data at scale"), with the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.limiter_overhead import BIN, ROOT, production_env, start
from tests.support.scratch_db import scratch_database

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.scale: start -->"
SECTION_END = "<!-- bench.scale: end -->"
PER_PAGE = 20


def flask(env: dict[str, str], *args: str) -> str:
    """Run `flask --app wsgi ARGS` and return its stdout (stderr holds the progress bar)."""
    done = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"flask {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def libpq(uri: str) -> str:
    """A SQLAlchemy URL as psycopg's conninfo."""
    return make_url(uri).set(drivername="postgresql").render_as_string(hide_password=False)


def seed(env: dict[str, str], users: int, posts_per_user: int) -> dict[str, float]:
    started = time.perf_counter()
    out = flask(
        env,
        "seed",
        "--users",
        str(users),
        "--posts-per-user",
        str(posts_per_user),
        "--password",
        "bench-password",
        "--batch-size",
        "2000",
    )
    wall = time.perf_counter() - started
    match = re.search(r"in ([\d.]+)s: ([\d,]+) users\+posts/s, ([\d,]+) rows/s", out)
    if not match:
        sys.exit(f"unexpected flask seed output: {out}")
    return {
        "rows": users * (1 + posts_per_user),
        "seconds": float(match[1]),
        "rows_per_s": float(match[2].replace(",", "")),
        "rows_per_s_with_events": float(match[3].replace(",", "")),
        "wall": wall,
    }


def vacuum_analyze(uri: str) -> None:
    with psycopg.connect(libpq(uri), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE users, posts")


# Latency ---------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection; `get` returns (milliseconds, parsed JSON)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[float, Any]:
        started = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            sys.exit(f"GET {path}: {response.status} {body[:300]!r}")
        return elapsed, json.loads(body)


def timed_rounds(cases: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Median milliseconds of each case, the cases interleaved round by round."""
    for run in cases.values():  # warm: caches, plans, connections
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, run in cases.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def latency(ports: dict[str, int], lists: dict[str, int], depth_page: int, reps: int) -> dict:
    estimate, exact = Client(ports["estimate"]), Client(ports["exact"])
    cases: dict[str, Callable[[], float]] = {}
    info: dict[str, Any] = {}
    for path, rows in lists.items():
        deep = min(depth_page, max(1, (rows - 1) // PER_PAGE))  # a page that has a next one
        _, first = estimate.get(f"{path}?per_page={PER_PAGE}&page=1")
        _, at_depth = estimate.get(f"{path}?per_page={PER_PAGE}&page={deep}")
        top_cursor = first["meta"]["next_cursor"]
        deep_cursor = at_depth["meta"]["next_cursor"]
        info[path] = {"deep_page": deep, "meta": first["meta"]}

        def req(client: Client, url: str) -> Callable[[], float]:
            return lambda: client.get(url)[0]

        base = f"{path}?per_page={PER_PAGE}"
        cases[f"{path} offset p1"] = req(estimate, f"{base}&page=1")
        cases[f"{path} offset p{deep}"] = req(estimate, f"{base}&page={deep}")
        cases[f"{path} cursor top"] = req(estimate, f"{base}&cursor={top_cursor}")
        cases[f"{path} cursor p{deep}"] = req(estimate, f"{base}&cursor={deep_cursor}")
        cases[f"{path} offset p1, exact total"] = req(exact, f"{base}&page=1")
    return {"medians": timed_rounds(cases, reps), "info": info}


def count_sql(uri: str, reps: int) -> dict[str, float]:
    """The count behind meta.total of GET /api/posts, as bare SQL: exact vs the planner's."""
    where = "FROM posts WHERE status = 'published' AND deleted_at IS NULL"
    statements = {
        "count(*) of published posts": f"SELECT count(*) {where}",
        "EXPLAIN estimate of the same": f"EXPLAIN (FORMAT JSON) SELECT 1 {where}",
    }
    with psycopg.connect(libpq(uri), autocommit=True) as conn:

        def run(sql: str) -> Callable[[], float]:
            def once() -> float:
                started = time.perf_counter()
                conn.execute(sql).fetchall()
                return (time.perf_counter() - started) * 1000

            return once

        return timed_rounds({k: run(v) for k, v in statements.items()}, reps)


# Backfill under concurrent writers -------------------------------------------------------------


@dataclass
class Writer:
    hot: bool
    waits_ms: list[float] = field(default_factory=list)
    errors: int = 0
    pid: int = 0


def sample_lock_waits(
    conninfo: str,
    stop: threading.Event,
    samples: list[tuple[int, float, tuple[int, ...]]],
    interval: float = 0.005,
) -> None:
    """Every `interval`: each backend of this database that waits for a lock, how long its
    statement has run, and who blocks it (pid, ms, blocking pids). The longest lock wait to
    within the interval; PostgreSQL keeps no per-statement lock-wait time of its own."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while not stop.is_set():
            for pid, waited, blockers in conn.execute(
                "SELECT pid, extract(epoch FROM clock_timestamp() - query_start) * 1000, "
                "pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            ):
                samples.append((pid, float(waited), tuple(blockers)))
            time.sleep(interval)


def write_loop(
    conninfo: str, writer: Writer, stop: threading.Event, max_id: int, seed: int
) -> None:
    """Short UPDATE transactions on posts, each timed; hot writers aim just ahead of the
    backfill's checkpoint (the rows its next batch will lock)."""
    import random

    rng = random.Random(seed)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.autocommit = False
        writer.pid = conn.info.backend_pid
        while not stop.is_set():
            if writer.hot:
                row = conn.execute(
                    "SELECT last_key FROM backfill_runs WHERE name = 'post_slugs'"
                ).fetchone()
                conn.commit()
                frontier = (row[0] or 0) if row else 0
                target = frontier + rng.randint(1, 1000)
            else:
                target = rng.randint(1, max_id)
            started = time.perf_counter()
            try:
                conn.execute(
                    "UPDATE posts SET body = body || '.', updated_at = now(), "
                    "version = version + 1 WHERE id = %s",
                    (target,),
                )
                elapsed = (time.perf_counter() - started) * 1000
                conn.commit()
            except psycopg.Error:
                conn.rollback()
                writer.errors += 1
                continue
            writer.waits_ms.append(elapsed)
            time.sleep(0.002)


def backfill(
    database_url: str, base: dict[str, str], users: int, posts_per_user: int, writers: int
) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-bf-") as tmp,
        scratch_database(database_url, Path(tmp), "backfill") as uri,
    ):
        env = {**base, "DATABASE_URL": uri}
        flask(env, "db", "upgrade", "0002")
        seeded = seed(env, users, posts_per_user)  # no slug column at 0002: none written
        flask(env, "db", "upgrade", "0003")  # expand: slug NULL on every row
        vacuum_analyze(uri)
        conninfo = libpq(uri)
        with psycopg.connect(conninfo) as conn:
            max_id, missing = conn.execute(
                "SELECT max(id), count(*) FILTER (WHERE slug IS NULL) FROM posts"
            ).fetchone() or (0, 0)
        # Uncontended baseline of the same UPDATE, before the backfill starts.
        idle = Writer(hot=False)
        stop = threading.Event()
        probe = threading.Thread(target=write_loop, args=(conninfo, idle, stop, max_id, 0))
        probe.start()
        time.sleep(3)
        stop.set()
        probe.join()
        baseline = statistics.median(idle.waits_ms)

        pool = [Writer(hot=i % 2 == 0) for i in range(writers)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=write_loop, args=(conninfo, w, stop, max_id, i + 1))
            for i, w in enumerate(pool)
        ]
        lock_samples: list[tuple[int, float, tuple[int, ...]]] = []
        threads.append(
            threading.Thread(target=sample_lock_waits, args=(conninfo, stop, lock_samples))
        )
        for t in threads:
            t.start()
        started = time.perf_counter()
        out = flask(env, "backfill", "run", "post_slugs")
        elapsed = time.perf_counter() - started
        stop.set()
        for t in threads:
            t.join()
        with psycopg.connect(conninfo) as conn:
            (left,) = conn.execute("SELECT count(*) FROM posts WHERE slug IS NULL").fetchone() or (
                0,
            )
        batch = int(env.get("BACKFILL_BATCH_SIZE", "1000"))
    writer_pids = {w.pid for w in pool}
    # A writer behind the backfill (not behind another writer: hot writers share rows).
    writer_lock = {
        pid: ms
        for pid, ms, blockers in sorted(lock_samples, key=lambda x: x[1])
        if pid in writer_pids and any(b not in writer_pids for b in blockers)
    }
    behind_writer = [
        ms
        for pid, ms, blockers in lock_samples
        if pid in writer_pids and all(b in writer_pids for b in blockers)
    ]
    backfill_lock = [ms for pid, ms, _ in lock_samples if pid not in writer_pids]
    hot = [ms for w in pool if w.hot for ms in w.waits_ms]
    cold = [ms for w in pool if not w.hot for ms in w.waits_ms]
    every = hot + cold
    return {
        "seeded": seeded,
        "rows": missing,
        "left": left,
        "seconds": elapsed,
        "rows_per_s": missing / elapsed,
        "batch": batch,
        "output": out.strip().splitlines()[-1] if out.strip() else "",
        "writers": writers,
        "updates": len(every),
        "errors": sum(w.errors for w in pool),
        "baseline_ms": baseline,
        "writers_waited": len(writer_lock),
        "writer_lock_max": max(writer_lock.values(), default=0.0),
        "writer_behind_writer_max": max(behind_writer, default=0.0),
        "backfill_lock_max": max(backfill_lock, default=0.0),
        "max_ms": max(every),
        "hot_p50": statistics.median(hot),
        "hot_p99": _pct(hot, 99),
        "hot_max": max(hot),
        "cold_p50": statistics.median(cold),
        "cold_p99": _pct(cold, 99),
        "cold_max": max(cold),
    }


def _pct(values: list[float], p: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, round(p / 100 * (len(data) - 1)))]


# Report ----------------------------------------------------------------------------------------


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    s = results["seed"]
    lines = [
        f"## Data at scale (issue #7) — {date.today().isoformat()}",
        "",
        "```",
        command,
        "```",
        "",
        f"PostgreSQL 15 on loopback, scratch databases; {args.users:,} users x "
        f"{args.posts_per_user} posts. Latencies: one keep-alive client, requests in sequence, "
        f"variants interleaved, median of {args.reps} rounds, gunicorn -w 1 production mode "
        "(rate limiting and JSON logs on), read cache on (lists are not cached). Load average "
        f"at the end of the run: {results['load']:.1f} (other work shares the 2 cores; tails "
        "suffer most).",
        "",
        "**Seeding** (`flask seed`, COPY, batches of 2,000 users with their posts and events, "
        "one transaction each):",
        f"{s['rows']:,} users+posts in {s['seconds']:.1f} s = **{s['rows_per_s']:,.0f} "
        f"users+posts/s** ({s['rows_per_s_with_events']:,.0f} rows/s counting the event row of "
        f"each; {s['wall']:.1f} s wall time including app start-up and ANALYZE).",
        "",
    ]
    lat = results["latency"]["medians"]
    info = results["latency"]["info"]
    lines += [
        "**List latency**, per_page 20, ms (median):",
        "",
        "| list | offset p1 | offset deep | cursor top | cursor deep | cursor deep/top |",
        "|---|---|---|---|---|---|",
    ]
    for path, meta in info.items():
        deep = meta["deep_page"]
        top, bottom = lat[f"{path} cursor top"], lat[f"{path} cursor p{deep}"]
        lines.append(
            f"| `{path}` (deep = page {deep:,}, offset {(deep - 1) * PER_PAGE:,}) "
            f"| {lat[f'{path} offset p1']:.2f} | {lat[f'{path} offset p{deep}']:.2f} "
            f"| {top:.2f} | {bottom:.2f} | **{bottom / top:.2f}x** |"
        )
    lines += [
        "",
        "Cursor pages cost the same at any depth (target: deep/top <= 1.5x); an offset page "
        "reads and discards every row before its own.",
        "",
        "**`meta.total`** (offset page 1; the estimate above PAGINATION_EXACT_COUNT_LIMIT = "
        "100,000):",
        "",
        "| list | total reported | page 1, estimated total | page 1, exact count | "
        "exact/estimated |",
        "|---|---|---|---|---|",
    ]
    for path, meta in info.items():
        m = meta["meta"]
        estimated = lat[f"{path} offset p1"]
        exact = lat[f"{path} offset p1, exact total"]
        flag = " (estimate)" if m.get("total_is_estimate") else " (exact)"
        lines.append(
            f"| `{path}` | {m['total']:,}{flag} | {estimated:.2f} | {exact:.2f} "
            f"| {exact / estimated:.1f}x |"
        )
    sql = results["count_sql"]
    lines += [
        "",
        "Bare SQL, ms (median): "
        + "; ".join(f"{name} **{ms:.2f}**" for name, ms in sql.items())
        + ".",
        "",
        "A list above the limit costs one planning pass for its total. A list at or under it "
        "gets an exact total from the planning pass plus a count capped at limit + 1 rows, a "
        f"little dearer than a plain count (`/api/users` here: {args.users:,} rows, "
        f"{'not above' if args.users <= 100_000 else 'above'} the limit); that is the price "
        "of the bound: no total ever costs more than counting `limit` rows, whatever the "
        "table's size.",
        "",
    ]
    b = results.get("backfill")
    if b:
        lines += [
            f"**Backfill** (`flask backfill run post_slugs`, batches of {b['batch']:,}, after "
            f"seeding at revision 0002 and upgrading to 0003): {b['rows']:,} rows in "
            f"{b['seconds']:.1f} s = **{b['rows_per_s']:,.0f} rows/s** with {b['writers']} "
            f"concurrent writers ({b['left']} left NULL; wall time of the command, start-up "
            f"included). Writers: {b['updates']:,} single-row UPDATEs of posts, each its own "
            f"transaction, {b['errors']} errors; half aimed at the 1,000 rows just past the "
            "backfill's checkpoint (the rows its next batch locks), half anywhere. Only the "
            "UPDATE is timed (a row lock is waited for there), not the COMMIT (the WAL flush).",
            "",
            "| writers | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            f"| at the checkpoint | {b['hot_p50']:.2f} | {b['hot_p99']:.2f} | {b['hot_max']:.2f} |",
            f"| anywhere | {b['cold_p50']:.2f} | {b['cold_p99']:.2f} | {b['cold_max']:.2f} |",
            "",
            "Longest lock wait of a writer behind the backfill, sampled from `pg_stat_activity` "
            f"(with `pg_blocking_pids`) every 5 ms: **{b['writer_lock_max']:.0f} ms** "
            f"({b['writers_waited']} of {b['writers']} writers were ever seen waiting for it). "
            f"For comparison: a writer behind another writer, at most "
            f"{b['writer_behind_writer_max']:.0f} ms; the backfill behind a writer, at most "
            f"{b['backfill_lock_max']:.0f} ms. Longest writer UPDATE: {b['max_ms']:.1f} ms (the "
            f"same UPDATE takes {b['baseline_ms']:.2f} ms uncontended; the writers aimed anywhere "
            "show what CPU contention alone adds on this shared 2-core machine).",
            "",
            f"An average batch took {b['seconds'] * 1000 * b['batch'] / b['rows']:.0f} ms (wall "
            "time / batches). A "
            "writer that touches a row of the running batch waits for that batch's commit, so "
            "the longest wait is about one batch: BACKFILL_BATCH_SIZE trades the backfill's "
            "speed for shorter waits (BACKFILL_SLEEP_SECONDS spaces the batches out).",
            "",
        ]
    else:
        lines += ["Backfill: not measured in this run (`--no-backfill`).", ""]
    return "\n".join(lines)


def record(text: str) -> None:
    block = f"{SECTION_START}\n{text.rstrip()}\n{SECTION_END}\n"
    current = RESULTS.read_text()
    if SECTION_START in current and SECTION_END in current:
        head, rest = current.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        RESULTS.write_text(head + block + tail.lstrip("\n"))
    else:
        RESULTS.write_text(current.rstrip() + "\n\n" + block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--posts-per-user", type=int, default=10)
    parser.add_argument("--depth-page", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--backfill-users", type=int, default=None, help="default: --users")
    parser.add_argument("--no-backfill", action="store_true")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgresql"):
        sys.exit("bench.scale needs DATABASE_URL=postgresql+psycopg://... (scratch dbs beside it)")
    command = " ".join(
        ["DATABASE_URL=postgresql+psycopg://... .venv/bin/python -m bench.scale", *sys.argv[1:]]
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        uri = stack.enter_context(scratch_database(database_url, work, "scale"))
        base = production_env(work, DATABASE_URL=uri, WEB_CONCURRENCY="1", LOG_LEVEL="WARNING")
        flask(base, "db", "upgrade")
        print(f"seeding {args.users:,} users x {args.posts_per_user} posts ...", flush=True)
        results["seed"] = seed(base, args.users, args.posts_per_user)
        print(f"  {results['seed']}", flush=True)
        vacuum_analyze(uri)
        ports = {"estimate": 18501, "exact": 18502}
        for name, limit in (("estimate", None), ("exact", "0")):
            env = dict(base)
            if limit is not None:
                env["PAGINATION_EXACT_COUNT_LIMIT"] = limit
            proc = start(env, ports[name], work / f"{name}.log")
            stack.callback(proc.terminate)
        published = args.users * args.posts_per_user
        lists = {"/api/posts": published, "/api/users": args.users}
        print("measuring list latency ...", flush=True)
        results["latency"] = latency(ports, lists, args.depth_page, args.reps)
        results["count_sql"] = count_sql(uri, args.reps)
        for name, ms in {**results["latency"]["medians"], **results["count_sql"]}.items():
            print(f"  {name:45} {ms:8.2f} ms")
    if not args.no_backfill:
        users = args.backfill_users or args.users
        print(f"backfill: seeding {users:,} users x {args.posts_per_user} at 0002 ...", flush=True)
        results["backfill"] = backfill(database_url, base, users, args.posts_per_user, args.writers)
        print(f"  {results['backfill']}")
    results["load"] = os.getloadavg()[0]
    text = report(args, results, command)
    print()
    print(text)
    if not args.no_record:
        record(text)
        print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
