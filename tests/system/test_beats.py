"""Many beats on one Redis (contract §10 "Scale-out"): two real `celery -A worker beat` processes
(celery-redbeat, its lock in Redis) send each periodic task once per period between them, and
when the beat holding the lock is killed the other takes over within the lock timeout.

The drill shortens one period (BLOCKLIST_RESYNC_SECONDS=3) and lets nothing consume the queues
(of its own): what the beats sent is counted both in their logs and in the broker.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from app.core.tasks import BEAT_KEY_PREFIX, beat_timing
from tests.support.backends import CACHE_DIR, REDIS_URL, needs_redis
from tests.support.paths import ROOT
from tests.support.rabbitmq import delete_queues, message_count, own_queues
from tests.support.workers import broker_settings, forget_queue, wait_for

pytestmark = [
    needs_redis,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.serial,  # a takeover bound: make test runs it alone, after the parallel part
]

PERIOD = 3  # resync-blocklist's, for the drill
SENDING = "Scheduler: Sending due task "
# Entries whose periods the drill leaves at an hour or more: a first run comes one period after
# the schedule is made, so no beat's start (the second's, the taking over) may send them.
HOURLY = ("purge-revoked-tokens", "purge-idempotency-keys", "warm-cache")


class Beat:
    """`celery -A worker beat` in its own process group, logging JSON lines to a file."""

    def __init__(self, name: str, directory: Path, env: dict[str, str]) -> None:
        self.log_path = directory / f"beat-{name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Beat:
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self) -> list[tuple[float, str]]:
        """(time, event) of each JSON log line."""
        found = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                record: dict[str, Any] = json.loads(line)
                stamp = datetime.fromisoformat(record["timestamp"]).timestamp()
                found.append((stamp, str(record["event"])))
        return found

    def sends(self) -> list[tuple[float, str]]:
        """(time, entry) of each periodic task this beat sent."""
        return [
            (stamp, event.removeprefix(SENDING).split(" ")[0])
            for stamp, event in self.events()
            if event.startswith(SENDING)
        ]

    def acquired_at(self) -> float | None:
        return next((t for t, event in self.events() if event == "beat: Acquired lock"), None)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _forget_beat_keys() -> None:
    client = redis.Redis.from_url(REDIS_URL or "")
    try:
        keys = list(client.scan_iter(f"{BEAT_KEY_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _waiting(broker_url: str, queue: str) -> int:
    if broker_url.startswith("redis"):
        client = redis.Redis.from_url(broker_url)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    return message_count(broker_url, queue) or 0


def test_two_beats_send_each_periodic_task_once_per_period_and_one_takes_over(
    app: Flask, tmp_path: Path
) -> None:
    broker = broker_settings(tmp_path)
    queues = own_queues()
    env = {
        **os.environ,
        **broker,
        **queues,
        "APP_ENV": "development",  # JSON log lines
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": REDIS_URL or "",
        "CACHE_DIR": CACHE_DIR,
        "INSTANCE_PATH": str(tmp_path),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "BLOCKLIST_RESYNC_SECONDS": str(PERIOD),
        "CACHE_WARM_INTERVAL_SECONDS": "0",  # never, after the first run
    }
    timing = beat_timing([PERIOD, 5.0])  # resync-blocklist's and webhooks-sweep's periods
    lock, tick = timing["redbeat_lock_timeout"], timing["beat_max_loop_interval"]
    _forget_beat_keys()
    first, second = Beat("a", tmp_path, env), Beat("b", tmp_path, env)
    try:
        first.start()
        wait_for("the first beat to take the lock", first.acquired_at, timeout=60)
        # The drill's shorter period reached the beat: its lock is sized to it.
        assert f"lock -> `{BEAT_KEY_PREFIX}:lock` " in first.log()
        assert f"({lock}s)" in first.log(), first.log()[-3000:]
        second.start()
        wait_for("the second beat to start", lambda: "beat: Starting" in second.log(), timeout=60)
        time.sleep(4 * PERIOD)
        assert first.alive()
        assert second.alive()
        assert second.acquired_at() is None, "one lock holder at a time"

        killed = time.time()
        first.kill9()
        taken = wait_for("the second beat to take over", second.acquired_at, timeout=lock + 30)
        # The lock expires `lock` seconds after its last renewal (at most a tick before the
        # kill); the standby tries once a tick. Slack for a loaded machine.
        assert taken - killed <= lock + tick + 2.0, (taken - killed, timing)
        time.sleep(4 * PERIOD)
        assert second.alive(), second.log()[-3000:]
    finally:
        first.stop()
        second.stop()
        _forget_beat_keys()

    try:
        sends = sorted(first.sends() + second.sends())
        by_entry: dict[str, list[float]] = {}
        for stamp, entry in sends:
            by_entry.setdefault(entry, []).append(stamp)
        assert all(stamp < killed for stamp, _ in first.sends())
        assert all(stamp >= taken for stamp, _ in second.sends()), "B sent only once holding"
        print(f"takeover {taken - killed:.1f} s (lock {lock} s, tick {tick} s); sends", sends)
        assert not set(HOURLY) & set(by_entry), by_entry
        for entry, period in (("resync-blocklist", PERIOD), ("webhooks-sweep", 5.0)):
            stamps = by_entry[entry]
            gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
            # Never twice in one period (a second beat sending too would make gaps near 0) ...
            assert min(gaps) >= period - 0.5, (entry, gaps)
            # ... and once in every period while a beat held the lock.
            for holder in (first, second):
                own = [t for t, name in holder.sends() if name == entry]
                assert max(b - a for a, b in itertools.pairwise(own)) <= period + 1.0
        # What the logs say was sent is what the broker holds (nothing consumed it).
        routed_default = [entry for _, entry in sends if entry != "webhooks-sweep"]
        default_queue = queues["CELERY_DEFAULT_QUEUE"]
        assert _waiting(broker["CELERY_BROKER_URL"], default_queue) == len(routed_default)
        webhooks = _waiting(broker["CELERY_BROKER_URL"], queues["WEBHOOKS_QUEUE"])
        assert webhooks == len(by_entry["webhooks-sweep"])
    finally:
        for queue in queues.values():
            forget_queue(broker["CELERY_BROKER_URL"], queue)
        if broker["CELERY_BROKER_URL"].startswith("amqp"):
            delete_queues(broker["CELERY_BROKER_URL"], *queues.values())
