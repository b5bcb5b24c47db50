"""The webhook drill (issue #16): 50 local targets, 5 dead and 5 answering in 9 s, 2,000 events
written through the API of a real gunicorn, published by a relay, fanned out by a worker and
delivered by the webhooks worker (thread pool, as in the Procfile). One command, PostgreSQL +
Redis, on a scratch database beside DATABASE_URL, dropped afterwards:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_wh_del \\
    REDIS_URL=redis://127.0.0.1:6379/8 CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
    CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/9 .venv/bin/python -m bench.webhooks

1. Every process as in the Procfile (APP_ENV=development only because the local receivers need
   WEBHOOKS_ALLOW_HTTP/PRIVATE, which production refuses): gunicorn (3 workers), one relay, the
   worker (`-Q celery,<feed>`), the webhooks worker (`nice -n 10`, `-P threads -c 16`). Default
   webhook settings (10 s timeout, 8 attempts, backoff 5 s doubling, breaker 5 failures / 60 s).
   The receivers run in a process of their own (as remote ones would not share the bench's).
2. 50 users with 10 posts each, each subscribing one target (`POST /api/webhooks`, events `*`):
   40 answer 200 at once, 5 after 9 s, 3 refuse connections, 2 answer 500.
3. Rounds (4): an **idle run** (every webhook disabled: the same load, no deliveries), then the
   **drill** (enabled); in each, every post is edited once (500 events) at a fixed rate (20
   writes/s, 4 writer threads) while a prober reads a post 20 times a second. Latency ratios
   drill/idle per round (the machine's drift cancels within a pair), their median (target <= 1.2).
4. Checks: every healthy target received every one of its events, each once, and in order per
   aggregate (versions increasing); signatures verified with `standardwebhooks`; how long after
   each drill round's last write its last healthy delivery came.

Results are printed and written to bench/RESULTS.md (section "Webhooks"), with the command.
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
from collections import Counter
from contextlib import ExitStack
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from standardwebhooks import Webhook as Verifier

from bench.limiter_overhead import BIN, ROOT, migrate, production_env, start
from bench.loadgen import median
from bench.read_path import OUT_OF_REACH, PASSWORD, call
from bench.relay import pg_url
from tests.support.scratch_db import scratch_database
from tests.support.workers import forget_queue

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.webhooks: start -->"
SECTION_END = "<!-- bench.webhooks: end -->"
PORT = 18491
USERS, POSTS = 50, 10  # a round: every post edited once, 500 events; 4 rounds: 2,000
SLOW, REFUSING, FAILING = 5, 3, 2  # targets: the rest are healthy
SLOW_SECONDS = 9.0


class Target:
    """One local receiver: records what it got (verified), answers as told."""

    def __init__(self, index: int, behaviour: str) -> None:
        self.index = index
        self.behaviour = behaviour  # healthy | slow | failing | refusing
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        if behaviour == "refusing":
            self.port = free_port()  # nothing listens there
            return
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target.take(body, {k.lower(): v for k, v in self.headers.items()})
                if target.behaviour == "slow":
                    time.sleep(SLOW_SECONDS)
                status = 500 if target.behaviour == "failing" else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{self.index}"

    def take(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            payload = Verifier(self.secret).verify(body, headers)
        except Exception:
            with self.lock:
                self.bad_signatures += 1
            return
        data = payload["data"]
        with self.lock:
            self.received.append(
                {
                    "at": time.monotonic(),
                    "id": data["id"],
                    "aggregate": data["aggregate"]["id"],
                    "version": data["version"],
                }
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def serve_targets(kinds: list[str], pipe: Any) -> None:
    """The receivers' own process (as remote receivers would be, they do not share the bench's
    client process and its GIL): every target, and a control endpoint for the bench."""
    targets = {n: Target(n, kind) for n, kind in enumerate(kinds)}

    class Control(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name: the secrets
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            for index, secret in body.items():
                targets[int(index)].secret = secret
            self.answer({})

        def do_GET(self) -> None:  # what each target received
            found = {}
            for index, target in targets.items():
                with target.lock:
                    found[index] = {"received": list(target.received), "bad": target.bad_signatures}
            self.answer(found)

        def answer(self, value: Any) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    pipe.send(
        {"control": control.server_address[1], "urls": {n: t.url for n, t in targets.items()}}
    )
    control.serve_forever()


class Receivers:
    """The bench's handle on the receivers' process."""

    def __init__(self, kinds: list[str]) -> None:
        import multiprocessing

        self.kinds = kinds
        parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("fork").Process(
            target=serve_targets, args=(kinds, child), daemon=True
        )
        self.proc.start()
        told = parent.recv()
        self.control = told["control"]
        self.urls = {int(n): url for n, url in told["urls"].items()}

    def set_secrets(self, secrets: dict[int, str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=30)
        conn.request("POST", "/", body=json.dumps(secrets))
        conn.getresponse().read()
        conn.close()

    def records(self) -> dict[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=60)
        conn.request("GET", "/")
        found = json.loads(conn.getresponse().read())
        conn.close()
        return {int(n): value for n, value in found.items()}

    def close(self) -> None:
        self.proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"{self.log.name} did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def percentile(values: list[float], p: float) -> float:
    data = sorted(values)
    if not data:
        return float("nan")
    return data[min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))]


def phase(accounts: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Every user edits each of their posts once, at `rate` writes/s in all, while a prober
    reads a post 20 times a second; the latencies of both, and each post's new version."""
    jobs = [(account, post) for account in accounts for post in account["posts"]]
    versions: dict[str, int] = {}
    writes: list[float] = []
    reads: list[float] = []
    errors = Counter[str]()
    lock = threading.Lock()
    started = time.monotonic()
    done = threading.Event()
    writers = 4

    def writer(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        for n in range(offset, len(jobs), writers):
            due = started + n / rate
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            account, post = jobs[n]
            body = json.dumps({"body": f"edit {n}"})
            headers = {
                "Authorization": f"Bearer {account['token']}",
                "Content-Type": "application/json",
            }
            began = time.perf_counter()
            try:
                conn.request("PATCH", f"/api/posts/{post}", body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            with lock:
                writes.append((time.perf_counter() - began) * 1000)
                if status == 200:
                    versions[post] = json.loads(answer)["data"]["version"]
                else:
                    errors[f"write {status}"] += 1
        conn.close()

    def prober() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        rng = random.Random(7)
        posts = [post for account in accounts for post in account["posts"]]
        n = 0
        while not done.is_set():
            n += 1
            due = started + n / 20
            if (pause := due - time.monotonic()) > 0:
                time.sleep(pause)
            began = time.perf_counter()
            try:
                conn.request("GET", f"/api/posts/{rng.choice(posts)}")
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            with lock:
                reads.append((time.perf_counter() - began) * 1000)
                if status != 200:
                    errors[f"read {status}"] += 1
        conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    probe = threading.Thread(target=prober)
    probe.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    probe.join()
    return {
        "started": started,
        "ended": time.monotonic(),
        "writes": writes,
        "reads": reads,
        "versions": versions,
        "errors": dict(errors),
        "load": os.getloadavg()[0],
    }


def check_target(got: list[dict[str, Any]], expected: dict[str, list[int]]) -> dict[str, Any]:
    """Got every event of its user once, each aggregate's versions in increasing order."""
    ids = Counter(item["id"] for item in got)
    per_aggregate: dict[str, list[int]] = {}
    for item in got:
        per_aggregate.setdefault(item["aggregate"], []).append(item["version"])
    in_order = all(versions == sorted(versions) for versions in per_aggregate.values())
    complete = {a: sorted(set(v)) for a, v in per_aggregate.items()} == expected
    return {
        "received": len(got),
        "distinct": len(ids),
        "duplicates": sum(n - 1 for n in ids.values()),
        "in_order": in_order,
        "complete": complete,
        "last_at": max((item["at"] for item in got), default=None),
    }


def make_accounts(count: int) -> list[dict[str, Any]]:
    """`count` users of the run's own, each logged in with POSTS published posts."""
    accounts: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        name = f"hook{n}x{uuid.uuid4().hex[:6]}"
        email = f"{name}@example.test"
        user = call(
            PORT, "POST", "/api/users", {"email": email, "username": name, "password": PASSWORD}
        )
        token = call(PORT, "POST", "/api/auth/login", {"email": email, "password": PASSWORD})[
            "data"
        ]["access_token"]
        posts = [
            call(
                PORT,
                "POST",
                f"/api/users/{user['data']['id']}/posts",
                {"title": f"Post {i}", "body": "Drill.", "status": "published"},
                token,
            )["data"]["id"]
            for i in range(POSTS)
        ]
        with lock:
            accounts.append({"n": n, "id": user["data"]["id"], "token": token, "posts": posts})

    threads = [
        threading.Thread(target=lambda k=k: [one(n) for n in range(k, count, 4)]) for k in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(accounts, key=lambda a: a["n"])


def wait_delivered(
    receivers: Receivers, expected: dict[int, dict[str, list[int]]], limit: float
) -> bool:
    deadline = time.monotonic() + limit
    healthy = [n for n, kind in enumerate(receivers.kinds) if kind == "healthy"]
    while time.monotonic() < deadline:
        records = receivers.records()
        if all(check_target(records[n]["received"], expected[n])["complete"] for n in healthy):
            return True
        time.sleep(1.0)
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second")
    parser.add_argument("--rounds", type=int, default=4, help="idle + drill pairs")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    database = os.environ.get("DATABASE_URL") or ""
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or ""
    if not database.startswith("postgresql") or not broker.startswith("redis"):
        raise SystemExit("needs DATABASE_URL=postgresql+psycopg://... and a Redis broker")
    kinds = ["slow"] * SLOW + ["refusing"] * REFUSING + ["failing"] * FAILING
    kinds += ["healthy"] * (USERS - len(kinds))
    receivers = Receivers(kinds)  # forked first, before this process starts any thread
    tag = uuid.uuid4().hex[:8]
    feed, hooks = f"bench-feed-{tag}", f"bench-hooks-{tag}"
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        stack.callback(receivers.close)
        url = stack.enter_context(scratch_database(database, work, "webhooks"))
        env = production_env(
            work,
            APP_ENV="development",
            DATABASE_URL=url,
            CELERY_BROKER_URL=broker,
            OUTBOX_QUEUE=feed,
            WEBHOOKS_QUEUE=hooks,
            WEBHOOKS_ALLOW_HTTP="true",
            WEBHOOKS_ALLOW_PRIVATE="true",
            WEBHOOKS_PER_USER="5",
            TASKS_ENABLED="true",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            RATELIMIT_AUTHENTICATED=OUT_OF_REACH,
            RATELIMIT_ANONYMOUS=OUT_OF_REACH,
            RATELIMIT_REGISTER=OUT_OF_REACH,
            RATELIMIT_LOGIN=OUT_OF_REACH,
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        migrate(env)
        for queue in (feed, hooks, "celery"):
            stack.callback(forget_queue, broker, queue)
        celery = [
            str(BIN / "celery"),
            "-A",
            "worker",
            "worker",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
        web = start(env, PORT, work / "web.log")
        stack.callback(web.terminate)
        worker = Process(
            [*celery, "-n", f"w{tag}@%h", "-Q", f"celery,{feed}", "-c", "2"],
            env,
            work / "worker.log",
        )
        stack.callback(worker.stop)
        deliverer = Process(  # as in the Procfile: its own queue, threads, a lower CPU priority
            [
                "nice",
                "-n",
                "10",
                *celery,
                "-n",
                f"h{tag}@%h",
                "-Q",
                hooks,
                "-P",
                "threads",
                "-c",
                "16",
            ],
            env,
            work / "hooks.log",
        )
        stack.callback(deliverer.stop)
        relay = Process(
            [str(BIN / "flask"), "--app", "wsgi", "outbox", "relay"], env, work / "relay.log"
        )
        stack.callback(relay.stop)
        for process in (worker, deliverer):
            process.wait_for(" ready.")
        relay.wait_for("outbox_relay_started")
        print("processes up; making accounts", flush=True)
        accounts = make_accounts(USERS)

        secrets: dict[int, str] = {}
        for account in accounts:
            created = call(
                PORT,
                "POST",
                "/api/webhooks",
                {"url": receivers.urls[account["n"]], "events": ["*"]},
                account["token"],
            )
            secrets[account["n"]] = created["data"]["secret"]
            account["webhook"] = created["data"]["id"]
        receivers.set_secrets(secrets)
        db = stack.enter_context(psycopg.connect(pg_url(url), autocommit=True))
        expected: dict[int, dict[str, list[int]]] = {a["n"]: {} for a in accounts}
        idle: list[dict[str, Any]] = []
        drill: list[dict[str, Any]] = []
        lags: list[float] = []
        delivered = True
        for round_ in range(args.rounds):
            # Idle: the same load with every webhook disabled (no fan-out, no drains).
            db.execute("UPDATE webhooks SET active = false")
            idle.append(phase(accounts, args.rate))
            print(f"  round {round_ + 1}: idle done", flush=True)
            db.execute("UPDATE webhooks SET active = true")
            drill.append(done := phase(accounts, args.rate))
            for account in accounts:
                for post in account["posts"]:
                    expected[account["n"]].setdefault(post, []).append(done["versions"][post])
            delivered = wait_delivered(receivers, expected, limit=120) and delivered
            healthy_last = max(
                (
                    item["at"]
                    for n, found in receivers.records().items()
                    if kinds[n] == "healthy"
                    for item in found["received"]
                ),
                default=done["ended"],
            )
            lags.append(healthy_last - done["ended"])
            print(f"  round {round_ + 1}: drill done, lag {lags[-1]:.1f} s", flush=True)
        finished = time.monotonic()
        records = receivers.records()
        checks = {n: check_target(records[n]["received"], expected[n]) for n in records}
        bad = sum(found["bad"] for found in records.values())
        with psycopg.connect(pg_url(url)) as conn:
            statuses = conn.execute(
                "SELECT w.url, d.status, count(*) FROM webhook_deliveries d "
                "JOIN webhooks w ON w.id = d.webhook_id GROUP BY w.url, d.status"
            ).fetchall()
        import redis

        client = redis.Redis.from_url(os.environ.get("REDIS_URL") or broker)
        breakers = Counter(
            (
                client.get(f"postboard:webhooks:breaker:{a['webhook']}:pybreaker:state") or b"none"
            ).decode()
            + ":"
            + kinds[a["n"]]
            for a in accounts
        )
        client.close()
        report(
            args, idle, drill, lags, receivers, checks, bad, delivered, finished, statuses, breakers
        )


def report(
    args: argparse.Namespace,
    idle: list[dict[str, Any]],
    drill: list[dict[str, Any]],
    lags: list[float],
    receivers: Receivers,
    checks: dict[int, dict[str, Any]],
    bad: int,
    delivered: bool,
    finished: float,
    statuses: list[tuple[str, str, int]],
    breakers: Counter[str],
) -> None:
    by_kind: dict[str, list[int]] = {}
    for index, kind in enumerate(receivers.kinds):
        by_kind.setdefault(kind, []).append(index)
    healthy = [checks[i] for i in by_kind["healthy"]]
    url_kind = {receivers.urls[n]: kind for n, kind in enumerate(receivers.kinds)}
    status_table: dict[str, Counter[str]] = {}
    for url, status, count in statuses:
        status_table.setdefault(url_kind[url], Counter())[status] += count
    events = USERS * POSTS * args.rounds

    rows = []
    for kind in ("writes", "reads"):
        for p in (50, 99):
            pooled_idle = percentile([v for run in idle for v in run[kind]], p)
            pooled_drill = percentile([v for run in drill for v in run[kind]], p)
            pairs = [
                percentile(d[kind], p) / percentile(i[kind], p)
                for i, d in zip(idle, drill, strict=True)
            ]
            rows.append(
                f"| {kind} p{p} | {pooled_idle:.1f} | {pooled_drill:.1f} | "
                f"**{median(pairs):.2f}x** | {', '.join(f'{r:.2f}' for r in pairs)} |"
            )
    slow = [checks[i]["received"] for i in by_kind["slow"]]
    loads = ", ".join(
        f"{run['load']:.1f}" for pair in zip(idle, drill, strict=True) for run in pair
    )
    errors = Counter[str]()
    for run in [*idle, *drill]:
        errors.update(run["errors"])
    lines = [
        f"## Webhooks (issue #16) — {date.today().isoformat()}",
        "",
        "```",
        "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_wh_del \\",
        "REDIS_URL=redis://127.0.0.1:6379/8 CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\",
        "CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/9 .venv/bin/python -m bench.webhooks"
        + f" --rounds {args.rounds} --rate {args.rate:g}",
        "```",
        "",
        f"50 targets: {len(by_kind['healthy'])} healthy, {SLOW} answering in {SLOW_SECONDS:g} s, "
        f"{REFUSING} refusing connections, {FAILING} answering 500; {events:,} events "
        f"(post.updated, {USERS} users x {POSTS} posts x {args.rounds} rounds) written at "
        f"{args.rate:g} writes/s (4 writer threads) beside a prober reading a post 20 times a "
        "second. Processes as in the Procfile: gunicorn 3 workers, 1 relay, the worker "
        "(2 processes), the webhooks worker (16 threads, `nice -n 10`); PostgreSQL + Redis; the "
        "receivers in a process of their own. Rounds interleave an idle run (the same load, "
        "every webhook disabled) and the drill; load average after each run: "
        f"{loads} (2 cores, shared with other sessions).",
        "",
        f"- Every healthy target got all its events: **{'yes' if delivered else 'NO'}** "
        f"({sum(c['distinct'] for c in healthy):,} of {len(healthy) * POSTS * args.rounds:,}; "
        f"duplicates {sum(c['duplicates'] for c in healthy)}); in order per aggregate: "
        f"**{'yes' if all(c['in_order'] for c in healthy) else 'NO'}**; bad signatures: {bad}.",
        "- Time to deliver: the last healthy delivery of a drill round came "
        + ", ".join(f"{lag:.1f}" for lag in lags)
        + " s after the round's last write (each round's writes took "
        + ", ".join(f"{run['ended'] - run['started']:.0f}" for run in drill)
        + " s).",
        f"- Slow targets (9 s an answer, one at a time per target) had received {sorted(slow)} "
        f"events when the run ended, {finished - drill[0]['started']:.0f} s after the first drill "
        "write; deliveries by status: "
        + "; ".join(
            f"{kind} {dict(sorted(status_table.get(kind, Counter()).items()))}"
            for kind in ("healthy", "slow", "refusing", "failing")
        )
        + f". Breakers at the end (state:target): {dict(sorted(breakers.items()))}.",
        f"- Non-200 answers: {dict(errors) or 'none'}.",
        "",
        "| API latency, ms | idle (pooled) | drill (pooled) | drill / idle, median of rounds "
        "(target <= 1.2x) | each round |",
        "|---|---|---|---|---|",
        *rows,
    ]
    text = "\n".join(lines)
    print(text)
    if args.no_record:
        return
    section = f"{SECTION_START}\n{text}\n{SECTION_END}"
    current = RESULTS.read_text()
    if SECTION_START in current:
        pattern = re.escape(SECTION_START) + ".*?" + re.escape(SECTION_END)
        current = re.sub(pattern, lambda _m: section, current, flags=re.S)
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(current)


if __name__ == "__main__":
    main()
