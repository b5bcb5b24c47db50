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
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from bench.limiter_overhead import BIN, ROOT, migrate, production_env, start
from bench.read_path import OUT_OF_REACH, PASSWORD, call
from bench.relay import pg_url
from bench.webhook_report import report
from bench.webhook_targets import (
    FAILING,
    POSTS,
    REFUSING,
    SLOW,
    USERS,
    Receivers,
    check_target,
)
from tests.support.scratch_db import scratch_database
from tests.support.workers import forget_queue

PORT = 18491


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


def phase(accounts: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Every user edits each of their posts once, at `rate` writes/s in all, while a prober
    reads a post 20 times a second; the latencies of both, and each post's new version."""
    jobs = [(account, post) for account in accounts for post in account["posts"]]
    versions: dict[str, int] = {}
    label = uuid.uuid4().hex[:8]
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
            body = json.dumps(
                {"body": f"edit {label} {n}"}
            )  # a change: an unchanged PATCH is no event
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


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a prefork worker's pool, gunicorn's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def measured(run: Any, *args: Any, cpu: dict[str, int]) -> dict[str, Any]:
    """`run(*args)`, with the CPU seconds each of our processes spent meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in cpu.items()}
    result: dict[str, Any] = run(*args)
    result["cpu"] = {name: cpu_seconds(pid) - before[name] for name, pid in cpu.items()}
    return result


def fed(db: Any, broker: str, feed: str) -> None:
    """Wait until the outbox is empty and the feed queue drained (then a moment for the last
    batch under way)."""
    import redis

    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waiting = db.execute("SELECT count(*) FROM outbox").fetchone()[0] + client.llen(feed)
        if not waiting:
            break
        time.sleep(0.2)
    client.close()
    time.sleep(1.0)


def copy_logs(work: Path, into: Path) -> None:
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, into / log.name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second")
    parser.add_argument("--rounds", type=int, default=4, help="idle + drill pairs")
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--logs", type=Path, help="copy the processes' logs here at the end")
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
        if args.logs is not None:
            stack.callback(copy_logs, work, args.logs)  # runs last: the processes have stopped
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
        processes = {
            "web": web.pid,
            "feed worker": worker.proc.pid,
            "webhooks worker": deliverer.proc.pid,
            "relay": relay.proc.pid,
        }
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
            idle.append(measured(phase, accounts, args.rate, cpu=processes))
            fed(db, broker, feed)  # every idle event fanned out while the webhooks were disabled
            print(f"  round {round_ + 1}: idle done", flush=True)
            db.execute("UPDATE webhooks SET active = true")
            drill.append(done := measured(phase, accounts, args.rate, cpu=processes))
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


if __name__ == "__main__":
    main()
