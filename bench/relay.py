"""The outbox relay (issue #15): how fast relays publish, and what a running relay costs the
write path. One command, PostgreSQL + Redis (the broker), on a scratch database beside
DATABASE_URL, dropped afterwards:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_outbox \\
    REDIS_URL=redis://127.0.0.1:6379/15 CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.relay [--events 50000] [--rounds 3] [--seconds 8]

1. **Relay throughput.** `flask outbox relay` processes (one, then two), started and idle; a
   backlog of N events (200-byte post.updated changes over 1,000 aggregates) and their outbox
   rows is committed in one transaction; the time from that commit until the outbox is empty,
   every event checked on the broker (Redis list of the run's own queue). Idle poll 0.1 s (the
   default 1 s would add up to a second of detection to the clock). Rounds interleave 1 and 2
   relays; medians.
2. **Write path with and without a relay.** gunicorn (the project's config, production mode),
   Python client threads PATCHing random posts of one user as fast as answered; rounds
   interleave "no relay" and "one relay running" (default settings), each starting with an
   empty outbox; the ratio with/without is the median of each pair of adjacent rounds
   (target >= 0.9), so the machine's drift over the run cancels out.

Results are printed and written to bench/RESULTS.md (section "Outbox relay"), with the command.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import redis
from sqlalchemy.engine import make_url

from bench.limiter_overhead import BIN, ROOT, migrate, production_env, start
from bench.loadgen import median
from bench.read_path import OUT_OF_REACH, bench_account
from tests.support.scratch_db import scratch_database
from tests.support.workers import forget_queue

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.relay: start -->"
SECTION_END = "<!-- bench.relay: end -->"
AGGREGATES = 1000
SHARDS = 16  # app/core/outbox.py


class Relays:
    """`count` relay processes, each in its own process group."""

    def __init__(self, env: dict[str, str], work: Path, count: int) -> None:
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        for n in range(count):
            log = work / f"relay-{uuid.uuid4().hex[:6]}-{n}.log"
            self.logs.append(log)
            self.procs.append(
                subprocess.Popen(
                    [str(BIN / "flask"), "--app", "wsgi", "outbox", "relay"],
                    cwd=ROOT,
                    env=env,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        while not all("outbox_relay_started" in log.read_text() for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise SystemExit("a relay did not start:\n" + self.logs[0].read_text()[-2000:])
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for proc in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def pg_url(sqlalchemy_url: str) -> str:
    return (
        make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )


def pending(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])  # type: ignore[index]


def wait_empty(conn: psycopg.Connection, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while pending(conn):
        if time.monotonic() > deadline:
            raise SystemExit("the outbox did not drain")
        time.sleep(0.01)
    return time.perf_counter()


def add_backlog(conn: psycopg.Connection, events: int) -> None:
    """`events` post.updated events and their outbox rows, in one transaction."""
    aggregates = [uuid.uuid4() for _ in range(AGGREGATES)]
    versions = dict.fromkeys(aggregates, 0)
    now = datetime.now(UTC)
    data = json.dumps(
        {"fields": ["body", "title"], "values": {"title": "t" * 40, "body": "b" * 160}}
    )
    rows, outbox = [], []
    for n in range(events):
        aggregate = aggregates[n % AGGREGATES]
        versions[aggregate] += 1
        event_id = uuid.uuid4()
        rows.append(
            (event_id, "post.updated", "post", aggregate, versions[aggregate], now, "bench", data)
        )
        outbox.append((event_id, aggregate.int % SHARDS))
    with conn.transaction(), conn.cursor() as cursor:
        columns = (
            "event_id, event_type, aggregate_type, aggregate_id, aggregate_version,"
            " occurred_at, request_id, data"
        )
        with cursor.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with cursor.copy("COPY outbox (event_id, shard) FROM STDIN") as copy:
            for row in outbox:
                copy.write_row(row)


def published_events(broker: str, queue: str) -> int:
    """Events in the run's queue (every message decoded), then the queue is emptied."""
    import base64

    client = redis.Redis.from_url(broker)
    try:
        total = 0
        for raw in client.lrange(queue, 0, -1):
            envelope = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
            total += len(args[0])
        client.delete(queue)
        return total
    finally:
        client.close()


def throughput_round(
    env: dict[str, str], work: Path, conn: psycopg.Connection, relays: int, events: int, broker: str
) -> float:
    running = Relays(env, work, relays)
    try:
        add_backlog(conn, events)
        started = time.perf_counter()
        finished = wait_empty(conn)
    finally:
        running.stop()
    got = published_events(broker, env["OUTBOX_QUEUE"])
    if got < events:
        raise SystemExit(f"only {got} of {events} events reached the broker")
    return events / (finished - started)


def write_load(
    port: int, token: str, posts: list[str], seconds: float, connections: int
) -> tuple[float, int]:
    """PATCHes answered 200 per second, and how many were not 200."""
    stop = time.monotonic() + seconds
    counts = {"ok": 0, "other": 0}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ok = other = 0
        while time.monotonic() < stop:
            body = json.dumps({"title": f"edit {rng.random()}"})
            try:
                conn.request("PATCH", f"/api/posts/{rng.choice(posts)}", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                other += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            if response.status == 200:
                ok += 1
            else:
                other += 1
        conn.close()
        with lock:
            counts["ok"] += ok
            counts["other"] += other

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts["ok"] / (time.monotonic() - began), counts["other"]


def drain(env: dict[str, str], work: Path, conn: psycopg.Connection, broker: str) -> None:
    if pending(conn):
        running = Relays(env, work, 1)
        try:
            wait_empty(conn)
        finally:
            running.stop()
    redis.Redis.from_url(broker).delete(env["OUTBOX_QUEUE"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=12)
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    database = os.environ.get("DATABASE_URL") or ""
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or ""
    if not database.startswith("postgresql") or not broker.startswith("redis"):
        raise SystemExit("needs DATABASE_URL=postgresql+psycopg://... and a Redis broker")
    queue = f"bench-relay-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(scratch_database(database, work, "relay"))
        base = production_env(
            work,
            DATABASE_URL=url,
            CELERY_BROKER_URL=broker,
            OUTBOX_QUEUE=queue,
            RATELIMIT_AUTHENTICATED=OUT_OF_REACH,
            RATELIMIT_ANONYMOUS=OUT_OF_REACH,
        )
        base.pop("PROMETHEUS_MULTIPROC_DIR", None)
        migrate(base)
        stack.callback(forget_queue, broker, queue)  # its list and kombu's bindings
        conn = stack.enter_context(psycopg.connect(pg_url(url), autocommit=True))

        # 1. Relay throughput, one and two relays interleaved.
        fast = {**base, "OUTBOX_IDLE_POLL_SECONDS": "0.1"}
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for relays in (1, 2):
                rate = throughput_round(fast, work, conn, relays, args.events, broker)
                rates[relays].append(rate)
                print(f"  {relays} relay(s): {rate:,.0f} events/s", flush=True)

        # 2. The write path, with and without a relay running.
        web = start(base, 18471, work / "web.log")
        stack.callback(web.terminate)
        token, posts = bench_account(18471, 200)
        writes: dict[str, list[float]] = {"without": [], "with": []}
        refused = 0
        relay_cpu: list[float] = []
        write_load(18471, token, posts, 3.0, args.connections)  # warm
        for _ in range(args.rounds):
            drain(base, work, conn, broker)
            rate, other = write_load(18471, token, posts, args.seconds, args.connections)
            writes["without"].append(rate)
            refused += other
            drain(base, work, conn, broker)
            running = Relays(base, work, 1)
            cpu_before = running.cpu_seconds()
            rate, other = write_load(18471, token, posts, args.seconds, args.connections)
            relay_cpu.append((running.cpu_seconds() - cpu_before) / args.seconds)
            running.stop()
            writes["with"].append(rate)
            refused += other
            print(f"  writes/s without {writes['without'][-1]:.0f}, with {rate:.0f}", flush=True)
        report(args, rates, writes, refused, relay_cpu)


def report(
    args: argparse.Namespace,
    rates: dict[int, list[float]],
    writes: dict[str, list[float]],
    refused: int,
    relay_cpu: list[float],
) -> None:
    one, two = median(rates[1]), median(rates[2])
    without, with_relay = median(writes["without"]), median(writes["with"])
    # Each "with" round against the "without" round just before it: the machine's drift over
    # the run (other load) cancels out of each pair.
    pairs = [w / wo for wo, w in zip(writes["without"], writes["with"], strict=True)]
    ratio = median(pairs)
    load = os.getloadavg()

    def rounds(values: list[float]) -> str:
        return ", ".join(f"{value:,.0f}" for value in values)

    lines = [
        f"## Outbox relay (issue #15) — {date.today().isoformat()}",
        "",
        "```",
        "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_outbox \\",
        "REDIS_URL=redis://127.0.0.1:6379/15 CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\",
        f"    .venv/bin/python -m bench.relay --events {args.events} --rounds {args.rounds} "
        f"--seconds {args.seconds:g} --connections {args.connections}",
        "```",
        "",
        f"PostgreSQL + Redis broker, {args.rounds} interleaved rounds, medians; load average "
        f"at the end {load[0]:.1f} on 2 cores (other sessions shared the machine).",
        "",
        "| | events/s published | rounds |",
        "|---|---|---|",
        f"| 1 relay | **{one:,.0f}** | {rounds(rates[1])} |",
        f"| 2 relays | **{two:,.0f}** | {rounds(rates[2])} |",
        "",
        f"Relay throughput: {args.events:,} events waiting (1,000 aggregates), committed at once; "
        "timed from that commit to an empty outbox, every event counted on the broker.",
        "",
        "| write path (`PATCH /api/posts/{id}`) | writes/s (median) | rounds |",
        "|---|---|---|",
        f"| no relay | {without:,.0f} | {rounds(writes['without'])} |",
        f"| one relay running | {with_relay:,.0f} | {rounds(writes['with'])} |",
        f"| **ratio** with/without (target ≥ 0.9) | **{ratio:.2f}** "
        f"(ratio of medians {with_relay / without:.2f}) | "
        f"{', '.join(f'{pair:.2f}' for pair in pairs)} |",
        "",
        f"gunicorn `-w {os.environ.get('WEB_CONCURRENCY', '3')} -k sync`, production mode, "
        f"{args.connections} Python client threads on the same cores, {args.seconds:g} s a round; "
        f"non-200 answers over the run: {refused}. The running relay used "
        f"{median(relay_cpu) * 100:.1f}% of a core (median round), publishing every write's event "
        "as it came.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_record:
        return
    section = f"{SECTION_START}\n{text}\n{SECTION_END}"
    current = RESULTS.read_text()
    if SECTION_START in current:
        pattern = re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END)
        current = re.sub(pattern, lambda _m: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(current)


if __name__ == "__main__":
    main()
