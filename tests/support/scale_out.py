"""The scale-out drill (issue #19, contract §10 "Scale-out"): two gunicorn instances, two Celery
workers and two beats on one PostgreSQL, Redis and RabbitMQ, under load for a minute. It records
what each shared guarantee shows, and per-instance throughput and the shared servers' load:
tests/system/test_scale_out.py asserts on the record, bench/scale_out.py reports it.

During the load, while client threads write through one instance and read through the other:
- a caller of its own sends anonymous requests to both instances in turn: the per-IP limit lets
  exactly its number through, whichever instance answers;
- a batch of tasks is queued and one worker is killed (SIGKILL) while it holds some of them;
- the beats schedule four periodic tasks with short periods;
and, after the load: a token revoked through one instance is refused by the other, and one
Idempotency-Key sent to both instances creates one post.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.paths import ROOT
from tests.support.scratch_db import scratch_database
from tests.support.topology import Process, Topology, rabbitmq_vhost, server_cpu_seconds
from tests.support.workers import sleep_marks

PASSWORD = "correct horse battery staple"
# Periodic tasks and the periods the drill gives them (seconds).
PERIODS = {
    "auth.resync_blocklist": ("BLOCKLIST_RESYNC_SECONDS", 4),
    "auth.purge_revoked_tokens": ("PURGE_REVOKED_TOKENS_SECONDS", 5),
    "idempotency.purge_expired_keys": ("IDEMPOTENCY_PURGE_SECONDS", 6),
    "cache.warm": ("CACHE_WARM_INTERVAL_SECONDS", 10),
}
ANONYMOUS_LIMIT = 40
LIMIT_PROBES = 100
SLEEP_TASKS = 12


@dataclass
class Record:
    seconds: float = 0.0
    requests: dict[int, int] = field(default_factory=dict)  # instance -> requests answered
    errors: list[str] = field(default_factory=list)  # 5xx and connection errors, described
    stale_reads: list[str] = field(default_factory=list)
    checked_reads: int = 0
    limit_statuses: list[int] = field(default_factory=list)
    lost_tasks: list[str] = field(default_factory=list)
    task_runs: dict[str, int] = field(default_factory=dict)  # token -> times started
    killed_worker_held: int = 0
    periodic: dict[str, list[float]] = field(default_factory=dict)  # task -> beats' send times
    periodic_received: dict[str, int] = field(default_factory=dict)  # task -> deliveries
    beats_window: tuple[float, float] = (0.0, 0.0)
    revoked_token_status: int = 0
    idempotent_ids: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process or server -> share of a core

    def rps(self, instance: int) -> float:
        return self.requests.get(instance, 0) / self.seconds if self.seconds else 0.0


class Client:
    """A keep-alive HTTP/1.1 client to one instance (one per thread)."""

    def __init__(self, port: int, forwarded_for: str | None = None) -> None:
        self.port = port
        self.forwarded_for = forwarded_for
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.forwarded_for:
            sent["X-Forwarded-For"] = self.forwarded_for
        data = json.dumps(body) if body is not None else None
        try:
            self.conn.request(method, path, body=data, headers=sent)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            raise
        return response.status, json.loads(raw) if raw else None


def _account(client: Client, label: str) -> tuple[str, str]:
    """Register and log in a new user: (user id, access token)."""
    name = f"{label}_{uuid.uuid4().hex[:8]}"
    status, body = client.call(
        "POST",
        "/api/users",
        {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
    )
    assert status == 201, body
    status, tokens = client.call(
        "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": PASSWORD}
    )
    assert status == 200, tokens
    return body["data"]["id"], tokens["data"]["access_token"]


def _writer(ports: list[int], token: str, post_id: str, record: Record, lock: threading.Lock):
    """Write through one instance, read through the other at once: the read must see the write."""
    clients = [Client(port) for port in ports]
    auth = {"Authorization": f"Bearer {token}"}

    def loop(stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            here, there = n % len(ports), (n + 1) % len(ports)
            title = f"title {n} {uuid.uuid4().hex[:6]}"
            for instance, method, path, body in (
                (here, "PATCH", f"/api/posts/{post_id}", {"title": title}),
                (there, "GET", f"/api/posts/{post_id}", None),
                (there, "GET", "/api/posts?per_page=20", None),
            ):
                try:
                    status, got = clients[instance].call(method, path, body, auth)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        record.errors.append(f"{method} {path} on {instance}: {exc!r}")
                    continue
                with lock:
                    record.requests[instance] = record.requests.get(instance, 0) + 1
                    if status >= 500:
                        record.errors.append(f"{method} {path} on {instance}: {status} {got}")
                    if method == "GET" and path.endswith(post_id) and status == 200:
                        record.checked_reads += 1
                        if got["data"]["title"] != title:
                            record.stale_reads.append(f"{got['data']['title']!r} != {title!r}")

    return loop


def _probe_limit(ports: list[int], record: Record) -> None:
    """One anonymous caller (its own forwarded address) against both instances in turn."""
    address = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    clients = [Client(port, forwarded_for=address) for port in ports]
    for n in range(LIMIT_PROBES):
        status, _ = clients[n % len(ports)].call("GET", "/api/posts?per_page=1")
        record.limit_statuses.append(status)
        time.sleep(0.05)


def _tasks_survive_a_killed_worker(
    topology: Topology, send_sleep: Any, record: Record
) -> list[str]:
    """Queue sleeps; when the first worker holds some, kill it (SIGKILL, its whole group)."""
    tokens = [uuid.uuid4().hex for _ in range(SLEEP_TASKS)]
    send_sleep(1.5, tokens)
    victim: Process = topology.of("worker")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = [t for t in tokens if sleep_marks(t)[0] > 0 and sleep_marks(t)[1] is None]
        if len(started) >= 2:
            break
        time.sleep(0.05)
    record.killed_worker_held = sum(1 for t in tokens if sleep_marks(t) == (1, None))
    victim.kill9()
    return tokens


def run_drill(topology: Topology, send_sleep: Any, seconds: float = 60.0) -> Record:
    """Load the running topology for `seconds` and record what each guarantee showed."""
    record, lock = Record(), threading.Lock()
    ports = [p.port for p in topology.of("web") if p.port is not None]
    setup = Client(ports[0], forwarded_for="198.51.100.7")
    loops = []
    for k in range(4):
        user_id, token = _account(setup, f"drill{k}")
        status, post = setup.call(
            "POST",
            f"/api/users/{user_id}/posts",
            {"title": "first", "body": "drill", "status": "published"},
            {"Authorization": f"Bearer {token}"},
        )
        assert status == 201, post
        loops.append(_writer(ports, token, post["data"]["id"], record, lock))

    stop = threading.Event()
    cpu_before = {**server_cpu_seconds(), **_process_cpu(topology)}
    started = time.monotonic()
    record.beats_window = (time.time(), 0.0)
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    time.sleep(seconds * 0.2)
    prober = threading.Thread(target=_probe_limit, args=(ports, record), daemon=True)
    prober.start()
    tokens = _tasks_survive_a_killed_worker(topology, send_sleep, record)
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    stop.set()
    for thread in [*threads, prober]:
        thread.join(timeout=30)
    record.seconds = time.monotonic() - started
    record.beats_window = (record.beats_window[0], time.time())
    cpu_after = {**server_cpu_seconds(), **_process_cpu(topology)}
    record.cpu = {  # the killed worker's share is left out: its children's time went with them
        name: (cpu_after[name] - cpu_before.get(name, 0.0)) / record.seconds
        for name in cpu_after
        if cpu_after[name] >= cpu_before.get(name, 0.0)
    }

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(sleep_marks(t)[1] is None for t in tokens):
        time.sleep(0.2)
    record.lost_tasks = [t for t in tokens if sleep_marks(t)[1] is None]
    record.task_runs = {t: sleep_marks(t)[0] for t in tokens}
    sent, received = topology.sent(), topology.received()
    record.periodic = {name: sent.get(name, []) for name in PERIODS}
    # Each send reached a worker (a redelivery after the kill counts once).
    record.periodic_received = {
        name: len({task_id for _, task_id in received.get(name, [])}) for name in PERIODS
    }
    _after_the_load(ports, record)
    return record


def _after_the_load(ports: list[int], record: Record) -> None:
    """Revocation and idempotency keys hold across instances."""
    first, second = Client(ports[0], "198.51.100.8"), Client(ports[-1], "198.51.100.8")
    _, token = _account(first, "revoked")
    auth = {"Authorization": f"Bearer {token}"}
    status, body = first.call("POST", "/api/auth/logout", None, auth)
    assert status in (200, 204), body
    record.revoked_token_status, _ = second.call("GET", "/api/me", None, auth)
    user_id, token = _account(first, "idem")
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Authorization": f"Bearer {token}"}
    post = {"title": "once", "body": "only once", "status": "published"}
    for client in (first, second):
        status, body = client.call("POST", f"/api/users/{user_id}/posts", post, headers)
        assert status in (200, 201), body
        record.idempotent_ids.append(body["data"]["id"])


def _process_cpu(topology: Topology) -> dict[str, float]:
    counts: dict[str, int] = {}
    found: dict[str, float] = {}
    for process in topology.processes:
        counts[process.role] = counts.get(process.role, 0) + 1
        found[f"{process.role} {counts[process.role]}"] = process.cpu_seconds()
    return found


def environment(
    base: dict[str, str], database_url: str, redis_url: str, broker_url: str, directory: Path
) -> dict[str, str]:
    """Every process's environment: the shared servers, short periods, real limits."""
    periods = {setting: str(seconds) for setting, seconds in PERIODS.values()}
    return {
        **base,
        "APP_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "INSTANCE_PATH": str(directory),
        "CACHE_DIR": str(directory / "cache"),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "TRUSTED_PROXY_COUNT": "1",  # as behind the gateway: the drill's callers name their address
        "RATELIMIT_ENABLED": "true",
        # Per day: the sliding-window counter's decay over the probe's seconds stays far below 1.
        "RATELIMIT_ANONYMOUS": f"{ANONYMOUS_LIMIT}/day",
        "RATELIMIT_AUTHENTICATED": "100000/minute",
        "RATELIMIT_REGISTER": "1000/minute",
        "RATELIMIT_LOGIN": "1000/minute",
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST_KIB": "1024",
        **periods,
    }


@contextlib.contextmanager
def running_topology(
    database_url: str, redis_url: str, amqp_url: str, directory: Path, *, webs: int = 2
) -> Iterator[tuple[Topology, Any]]:
    """A scratch database and RabbitMQ vhost of the drill's own, migrated, with `webs` gunicorn
    instances (2 workers each), two Celery workers and two beats running on them. Yields the
    topology and a function that queues worker.sleep(seconds, token) on its broker."""
    with (
        scratch_database(database_url, directory, "scaleout") as database,
        rabbitmq_vhost(amqp_url, "scaleout") as broker,
    ):
        env = environment(dict(os.environ), database, redis_url, broker, directory)
        topology = Topology(directory, env)
        topology.migrate()
        try:
            for _ in range(webs):
                topology.web(workers=2)
            for _ in range(2):
                topology.worker(concurrency=2)
            for _ in range(2):
                topology.beat()
            topology.wait_ready()

            def send_sleep(seconds: float, tokens: list[str]) -> None:
                # From a process of the drill's environment: Celery in this one would prefer
                # the test run's own CELERY_BROKER_URL to any app's setting.
                done = subprocess.run(
                    [sys.executable, "-c", _SEND_SLEEPS, str(seconds), *tokens],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, done.stderr[-3000:]

            yield topology, send_sleep
        finally:
            topology.stop()


_SEND_SLEEPS = """
import sys
from app import create_app
app = create_app()
with app.app_context():
    for token in sys.argv[2:]:
        app.extensions["celery"].send_task("worker.sleep", args=(float(sys.argv[1]), token))
"""
