"""Outbox drills: a relay (`flask outbox relay`) in its own process, the feed queue it publishes
to read back in publish order without consuming it through Celery (Redis or RabbitMQ), and the
checks every drill makes on what was published."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.support.backends import CACHE_DIR, REDIS_URL
from tests.support.paths import ROOT
from tests.support.workers import forget_queue

AMQP_URL = os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672//"


def redis_broker_url() -> str | None:
    """The Redis the drills publish to: CELERY_BROKER_URL when it is Redis, else REDIS_URL."""
    broker = os.environ.get("CELERY_BROKER_URL") or ""
    return broker if broker.startswith("redis") else REDIS_URL


def rabbitmq_reachable() -> bool:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


class FeedQueue:
    """The feed queue of one drill on a real broker, read in publish order."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self.name = f"pbtest-outbox-{uuid.uuid4().hex[:10]}"
        self.amqp = broker_url.startswith(("amqp", "pyamqp"))
        self._taken: list[list[dict[str, Any]]] = []  # RabbitMQ: drained messages, in order

    def count(self) -> int:
        """Messages published so far (taken or waiting)."""
        if self.amqp:
            from kombu import Connection

            with Connection(self.broker_url) as conn:
                try:
                    declared = conn.default_channel.queue_declare(self.name, passive=True)
                except Exception:  # not declared yet: nothing published
                    return 0
                return len(self._taken) + int(declared.message_count)
        client = redis.Redis.from_url(self.broker_url)
        try:
            return int(client.llen(self.name))
        finally:
            client.close()

    def messages(self) -> list[list[dict[str, Any]]]:
        """Every message's events, oldest message first."""
        if self.amqp:
            self._drain_amqp()
            return list(self._taken)
        client = redis.Redis.from_url(self.broker_url)
        try:
            raw = client.lrange(self.name, 0, -1)
        finally:
            client.close()
        # kombu pushes on the left and workers pop on the right: the oldest is last.
        return [_celery_events(json.loads(item)) for item in reversed(raw)]

    def events(self) -> list[dict[str, Any]]:
        return [event for message in self.messages() for event in message]

    def _drain_amqp(self) -> None:
        from kombu import Connection

        with Connection(self.broker_url) as conn:
            channel = conn.default_channel
            with contextlib.suppress(Exception):  # not declared: nothing to take
                while (message := channel.basic_get(self.name, no_ack=True)) is not None:
                    args, _kwargs, _embed = json.loads(message.body)
                    self._taken.append(args[0])

    def delete(self) -> None:
        if self.amqp:
            from kombu import Connection

            with Connection(self.broker_url) as conn, contextlib.suppress(Exception):
                conn.default_channel.queue_delete(self.name)
                conn.default_channel.exchange_delete(self.name)
            return
        forget_queue(self.broker_url, self.name)


def _celery_events(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one Celery task message as kombu's Redis transport stores it."""
    assert envelope["headers"]["task"] == "events.feed"
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    return list(args[0])


class RelayProcess:
    """`flask outbox relay` in its own process group (so `kill -9` takes all of it)."""

    def __init__(self, database_url: str, broker_url: str, queue: str, directory: Path, **env: str):
        self.log_path = directory / f"relay-{uuid.uuid4().hex[:8]}.log"
        self.env = {
            **os.environ,
            "APP_ENV": "development",  # JSON log lines, as in production
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL or "",
            "CELERY_BROKER_URL": broker_url,
            "CELERY_RESULT_BACKEND": "cache+memory://",
            "OUTBOX_QUEUE": queue,
            "OUTBOX_LEASE_SECONDS": "2",
            "OUTBOX_POLL_SECONDS": "0.05",
            "OUTBOX_IDLE_POLL_SECONDS": "0.2",
            "INSTANCE_PATH": str(directory),
            "CACHE_DIR": CACHE_DIR,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc: subprocess.Popen | None = None

    def start(self) -> RelayProcess:
        return self.launch().wait_started()

    def launch(self) -> RelayProcess:
        flask = [sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "relay"]
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                flask,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_started(self) -> RelayProcess:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while "outbox_relay_started" not in self.log() and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()[-3000:]
            time.sleep(0.05)
        assert "outbox_relay_started" in self.log(), self.log()[-3000:]
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM, then wait: its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def published_total(self) -> int:
        """What it said it published when it stopped."""
        for line in reversed(self.log().splitlines()):
            if line.startswith("{") and '"outbox_relay_stopped"' in line:
                return int(json.loads(line)["published_total"])
        raise AssertionError(f"the relay did not report its stop:\n{self.log()[-2000:]}")


def wait_until(what: str, check: Any, timeout: float = 60.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def committed_events(conn: sa.Connection, since_id: int) -> list[tuple[str, str, int]]:
    """(event id, aggregate id, version) of every event after `since_id`, in id order."""
    rows = conn.execute(
        sa.text(
            "SELECT event_id, aggregate_id, aggregate_version FROM events"
            " WHERE id > :since ORDER BY id"
        ),
        {"since": since_id},
    )
    return [(str(uuid.UUID(str(e))), str(uuid.UUID(str(a))), int(v)) for e, a, v in rows]


def check_feed(
    published: list[dict[str, Any]], committed: list[tuple[str, str, int]]
) -> Counter[str]:
    """Every committed event was published; per aggregate, the first copies come in commit
    order; every published event was committed. Returns how often each id was published."""
    copies = Counter(event["id"] for event in published)
    committed_ids = {event_id for event_id, _, _ in committed}
    assert committed_ids - set(copies) == set(), "committed events were never published"
    assert set(copies) - committed_ids == set(), "published events that were never committed"
    firsts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for event in published:
        if event["id"] not in seen:
            seen.add(event["id"])
            firsts.setdefault(event["aggregate"]["id"], []).append(event["version"])
    expected: dict[str, list[int]] = {}
    for _, aggregate, version in committed:
        expected.setdefault(aggregate, []).append(version)
    assert firsts == expected, "an aggregate's events were first published out of commit order"
    return copies
