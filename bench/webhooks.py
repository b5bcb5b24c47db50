"""The webhook drill (issue #16): 50 local targets, 5 dead and 5 answering in 9 s, 2,000 events
written through the API of a real gunicorn, published by a relay, fanned out by a worker and
delivered by the webhooks worker (thread pool, as in the Procfile). One command, PostgreSQL +
Redis, on a scratch database beside DATABASE_URL, dropped afterwards:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_wh_del \\
    REDIS_URL=redis://127.0.0.1:6379/8 CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\
    CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/9 .venv/bin/python -m bench.webhooks

1. Every process as in production (APP_ENV=development only because the local receivers need
   WEBHOOKS_ALLOW_HTTP/PRIVATE, which production refuses): gunicorn (3 workers), one relay, the
   worker (`-Q celery,<feed>`), the webhooks worker (`-P threads -c 16`). Default webhook
   settings (10 s timeout, 8 attempts, backoff 5 s doubling, breaker 5 failures / 60 s).
2. 50 users, each with 10 posts; each write phase: every user updates each post 4 times = 2,000
   events (post.updated), sent by 4 writer threads at a fixed 50 writes/s, while a prober reads
   `GET /api/posts/{id}` 20 times a second. Latencies: the writes' and the reads', p50 and p99.
3. **Idle run**: the phase with no webhook subscribed. **Drill**: each user subscribes one
   target (`POST /api/webhooks`, events `*`), then the same phase. 40 targets answer 200 at
   once, 5 after 9 s, 3 refuse connections, 2 answer 500. Ratios drill/idle (target <= 1.2).
4. Checks: every healthy target received every one of its 40 events, each once, and in order
   per aggregate (versions increasing); signatures verified with `standardwebhooks`; time from
   the phase's first write until the last healthy delivery, and after the last write.

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
from bench.read_path import OUT_OF_REACH, PASSWORD, call
from bench.relay import pg_url
from tests.support.scratch_db import scratch_database
from tests.support.workers import forget_queue

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION_START = "<!-- bench.webhooks: start -->"
SECTION_END = "<!-- bench.webhooks: end -->"
PORT = 18491
USERS, POSTS, EDITS = 50, 10, 4  # 50 x 10 x 4 = 2,000 post.updated events a phase
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
    """Every user edits each of their posts EDITS times, at `rate` writes/s in all, while a
    prober reads a post 20 times a second; the latencies of both."""
    jobs = [
        (account, post) for _ in range(EDITS) for account in accounts for post in account["posts"]
    ]
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
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            with lock:
                writes.append((time.perf_counter() - began) * 1000)
                if status != 200:
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
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
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
        deliverer = Process(
            [*celery, "-n", f"h{tag}@%h", "-Q", hooks, "-P", "threads", "-c", "16"],
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

        print("idle run (no webhooks)", flush=True)
        idle = phase(accounts, args.rate)
        time.sleep(5)  # its events consumed before subscribing

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
        with psycopg.connect(pg_url(url)) as conn:
            versions = dict(conn.execute("SELECT public_id::text, version FROM posts").fetchall())
        expected = {
            account["n"]: {
                post: list(range(versions[post] + 1, versions[post] + 1 + EDITS))
                for post in account["posts"]
            }
            for account in accounts
        }
        print("drill (50 targets)", flush=True)
        drill = phase(accounts, args.rate)
        delivered = wait_delivered(receivers, expected, limit=240)
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
        report(args, idle, drill, receivers, checks, bad, delivered, finished, statuses, breakers)


def report(
    args: argparse.Namespace,
    idle: dict[str, Any],
    drill: dict[str, Any],
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
    last = max(c["last_at"] or 0 for c in healthy)
    url_kind = {receivers.urls[n]: kind for n, kind in enumerate(receivers.kinds)}
    status_table: dict[str, Counter[str]] = {}
    for url, status, count in statuses:
        status_table.setdefault(url_kind[url], Counter())[status] += count

    def lat(run: dict[str, Any], kind: str, p: float) -> float:
        return percentile(run[kind], p)

    rows = []
    for kind in ("writes", "reads"):
        for p in (50, 99):
            a, b = lat(idle, kind, p), lat(drill, kind, p)
            rows.append(f"| {kind} p{p} | {a:.1f} | {b:.1f} | **{b / a:.2f}x** |")
    slow = [checks[i]["received"] for i in by_kind["slow"]]
    lines = [
        f"## Webhooks (issue #16) — {date.today().isoformat()}",
        "",
        "```",
        "DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_wh_del \\",
        "REDIS_URL=redis://127.0.0.1:6379/8 CELERY_BROKER_URL=redis://127.0.0.1:6379/9 \\",
        "CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/9 .venv/bin/python -m bench.webhooks"
        + (f" --rate {args.rate:g}" if args.rate != 50 else ""),
        "```",
        "",
        f"50 targets: {len(by_kind['healthy'])} healthy, {SLOW} answering in {SLOW_SECONDS:g} s, "
        f"{REFUSING} refusing connections, {FAILING} answering 500; {USERS * POSTS * EDITS:,} "
        f"events (post.updated) a phase at {args.rate:g} writes/s; gunicorn 3 workers, 1 relay, "
        "the worker (2 processes), the webhooks worker (16 threads), PostgreSQL + Redis; load "
        f"average {idle['load']:.1f} after the idle run, {drill['load']:.1f} after the drill, on 2 "
        "cores shared with other sessions.",
        "",
        f"- Every healthy target got all its events: **{'yes' if delivered else 'NO'}** "
        f"({sum(c['distinct'] for c in healthy):,} of {len(healthy) * POSTS * EDITS:,}; "
        f"duplicates {sum(c['duplicates'] for c in healthy)}); in order per aggregate: "
        f"**{'yes' if all(c['in_order'] for c in healthy) else 'NO'}**; bad signatures: "
        f"{bad}.",
        f"- Time to deliver: last healthy delivery **{last - drill['started']:.1f} s** after the "
        f"drill's first write ({last - drill['ended']:.1f} s after its last; the writes took "
        f"{drill['ended'] - drill['started']:.1f} s).",
        f"- Slow targets (9 s each, one at a time per target) had received {sorted(slow)} events "
        f"when the check ended, {finished - drill['started']:.0f} s in; refusing and failing "
        "targets: "
        + ", ".join(
            f"{kind} {dict(status_table.get(kind, {}))}" for kind in ("refusing", "failing", "slow")
        )
        + f"; breakers at the end: {dict(sorted(breakers.items()))}.",
        f"- Errors: idle {idle['errors'] or 'none'}, drill {drill['errors'] or 'none'}.",
        "",
        "| API latency, ms | idle run | drill | drill / idle (target ≤ 1.2x) |",
        "|---|---|---|---|",
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
