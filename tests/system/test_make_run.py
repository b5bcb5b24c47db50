"""`make run` for real (contract §1): migrations, then web + worker + beat + the webhooks worker +
the outbox relay under one supervisor (app/ops/supervisor.py, honcho's Manager), every output
line prefixed by its process and interleaved; Ctrl-C or SIGTERM gives each a warm stop.

Each test runs `make run` in a temporary instance directory (the embedded default's SQLite
database, broker and cache live there, never in the repo's instance/), or on the PostgreSQL and
Redis the environment names. `make -o .venv/.runtime-stamp` skips only the install step,
which would reinstall the shared virtualenv (`make test` exercises that rule).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook as Verifier

from tests.support.backends import REDIS_URL
from tests.support.live import Http, free_port
from tests.support.paths import ROOT
from tests.support.webhook_delivery import receiver

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="needs GNU make")
NAMES = r"system|web\.1|worker\.1|beat\.1|webhooks\.1|relay\.1"  # the supervised processes
PREFIXED = re.compile(rf"^\d\d:\d\d:\d\d ({NAMES})\s*\| (.*)$")
# honcho prints what it reads from a process in chunks: a chunk may end just before a line's
# newline, and the next prefixed line is then glued to it. Lines start at each prefix.
LINE_START = re.compile(rf"(?=\d\d:\d\d:\d\d (?:{NAMES})\s*\| )")
PROCESSES = ("web.1", "worker.1", "beat.1", "webhooks.1", "relay.1")


class MakeRun:
    """`make run` in its own process group, as a terminal would run it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "make-run.log"
        self.env = {
            **os.environ,
            "APP_ENV": "development",
            "PORT": str(self.port),
            "INSTANCE_PATH": str(directory),
            "CACHE_DIR": str(directory / "cache"),
            "WEB_CONCURRENCY": "2",
            "CELERY_CONCURRENCY": "1",
            "WEBHOOKS_CONCURRENCY": "2",
            "LOG_LEVEL": "INFO",
            # The test's webhook receiver is plain http on loopback.
            "WEBHOOKS_ALLOW_HTTP": "true",
            "WEBHOOKS_ALLOW_PRIVATE": "true",
        }
        self.env.pop("PYTEST_CURRENT_TEST", None)
        self.broker = self.env.get("CELERY_BROKER_URL") or (
            REDIS_URL or f"sqla+sqlite:///{directory / 'celery-broker.sqlite3'}"
        )
        self.backend = self.env.get("CELERY_RESULT_BACKEND") or (
            REDIS_URL or f"db+sqlite:///{directory / 'celery-results.sqlite3'}"
        )
        self.http = Http(f"http://127.0.0.1:{self.port}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> MakeRun:
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [str(MAKE), "--no-print-directory", "-o", ".venv/.runtime-stamp", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for("web to answer /health", self._web_up, timeout=120)
        self.wait_for("the worker to be ready", lambda: " ready." in self.said("worker.1"))
        self.wait_for("beat to start", lambda: "beat: Starting" in self.said("beat.1"))
        self.wait_for(
            "the webhooks worker to be ready", lambda: " ready." in self.said("webhooks.1")
        )
        self.wait_for("the relay to start", lambda: "outbox_relay_started" in self.said("relay.1"))
        return self

    def _web_up(self) -> bool:
        try:
            return self.http.call("GET", "/health")[0] == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def lines(self) -> list[tuple[str, str]]:
        """(process, text) of every prefixed line."""
        return [
            (match.group(1), match.group(2))
            for match in map(PREFIXED.match, self._split_lines())
            if match
        ]

    def _split_lines(self) -> list[str]:
        return [
            piece.rstrip("\n")
            for line in self.output().splitlines()
            for piece in LINE_START.split(line)
            if piece
        ]

    def said(self, process: str) -> str:
        return "\n".join(text for name, text in self.lines() if name == process)

    def json_lines(self, process: str) -> list[dict]:
        parsed = []
        for name, text in self.lines():
            if name == process and text.startswith("{"):
                parsed.append(json.loads(text))
        return parsed

    def wait_for(self, what: str, check, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if check():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"make run exited while waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        """Whatever is left, once the test is done with it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=90)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    running = MakeRun(tmp_path)
    try:
        yield running.start()
    finally:
        running.stop()
        print(running.output()[-6000:])


def assert_everyone_stopped_cleanly(run: MakeRun) -> None:
    output = run.output()
    for process in PROCESSES:
        assert f"{process} stopped (rc=0)" in output, output[-4000:]
    assert "SIGKILL" not in output, output[-4000:]
    # The supervisor itself exited 0: make reports no failed recipe.
    assert "make: ***" not in output, output[-4000:]


def _sleep_runs(run: MakeRun, token: str) -> int:
    key = f"postboard:test:sleep:{token}:runs"
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(client.get(key) or 0)
        finally:
            client.close()
    import diskcache

    with diskcache.Cache(str(run.directory / "cache")) as disk:
        return int(disk.get(key) or 0)


@pytest.fixture
def hook_receiver() -> Iterator[HTTPServer]:
    with receiver() as server:
        yield server


def test_sigterm_stops_web_worker_and_beat_gracefully_mid_task(
    make_run: MakeRun, hook_receiver: HTTPServer
) -> None:
    run = make_run
    assert run.proc is not None
    # Migrated, and everything lives in the temporary instance directory; with Redis, beat's
    # schedule and lock live there instead (celery-redbeat: docs/brokers.md).
    if REDIS_URL:
        deadline = time.monotonic() + 30
        while "beat: Acquired lock" not in run.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "beat: Acquired lock" in run.output(), run.output()[-4000:]
    else:
        assert any(path.name.startswith("celerybeat-schedule") for path in run.directory.iterdir())

    # A write whose write-through task the worker runs, with the request's id in its lines.
    name = f"run{uuid.uuid4().hex[:8]}"
    password = "make run password"
    status, _, body = run.http.call(
        "POST",
        "/api/users",
        {"email": f"{name}@example.com", "username": name, "password": password},
    )
    assert status == 201
    user_id = body["data"]["id"]
    status, _, body = run.http.call(
        "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": password}
    )
    assert status == 200
    request_id = f"req-run-{uuid.uuid4().hex[:8]}"
    headers = {
        "Authorization": f"Bearer {body['data']['access_token']}",
        "X-Request-ID": request_id,
    }
    # A webhook for the user's updates, delivered by the webhooks worker (its own queue).
    hook_receiver.expect_request("/hook").respond_with_data("ok")
    status, _, hook = run.http.call(
        "POST",
        "/api/webhooks",
        {"url": hook_receiver.url_for("/hook"), "events": ["user.updated"]},
        headers,
    )
    assert status == 201, hook
    assert (
        run.http.call("PATCH", f"/api/users/{user_id}", {"bio": "via make run"}, headers)[0] == 200
    )
    run.wait_for(
        "the worker's line for the write's task",
        lambda: any(
            line.get("request_id") == request_id and "cache.refresh_user" in str(line["event"])
            for line in run.json_lines("worker.1")
        ),
    )
    assert any(line.get("request_id") == request_id for line in run.json_lines("web.1"))
    # The relay published the writes' events and the worker consumed them from the feed.
    run.wait_for(
        "the worker to consume the event feed",
        lambda: any(
            "events.feed" in str(line.get("event")) and "succeeded" in str(line.get("event"))
            for line in run.json_lines("worker.1")
        ),
    )
    run.wait_for("the webhooks worker to deliver", lambda: len(hook_receiver.log) == 1)
    (request, _), *_ = hook_receiver.log
    delivered = Verifier(hook["data"]["secret"]).verify(request.get_data(), dict(request.headers))
    assert delivered["data"]["changes"]["bio"] == "via make run"
    # The relay is a service process (a `flask` command, but not one for a terminal): JSON lines.
    assert any(line.get("event") == "outbox_relay_started" for line in run.json_lines("relay.1"))

    # A task longer than honcho's own 5 s kill wait, running when SIGTERM arrives.
    producer = Celery("make-run-probe", broker=run.broker, backend=run.backend)
    token = uuid.uuid4().hex
    result = producer.send_task("worker.sleep", args=[8, token])
    run.wait_for("the task to start", lambda: _sleep_runs(run, token) == 1)

    os.kill(run.proc.pid, signal.SIGTERM)  # to make, which passes it on to the supervisor
    run.proc.wait(timeout=120)

    assert "SIGTERM received" in run.said("system")
    assert "Warm shutdown" in run.said("worker.1")
    assert f"[{result.id}] succeeded" in run.said("worker.1")
    assert "Shutting down: Master" in run.said("web.1") or any(
        "Shutting down" in str(line.get("event")) for line in run.json_lines("web.1")
    )
    assert_everyone_stopped_cleanly(run)
    outcome = result.get(timeout=30)
    assert (outcome["run"], outcome["first"]) == (1, True)
    producer.close()

    # One stream: every line prefixed by its process, and the processes' lines interleaved.
    lines = run.lines()
    names = [name for name, _ in lines]
    assert set(PROCESSES) <= set(names)
    runs = [name for index, name in enumerate(names) if index == 0 or names[index - 1] != name]
    assert len(runs) > len(set(names)), "each process's lines came in one block"
    # (make echoes its commands; `flask db upgrade` runs before the supervisor starts.)
    supervised = run.output().split("app.ops.supervisor Procfile\n", 1)[1].splitlines()
    unprefixed = [line for line in supervised if line and not PREFIXED.match(line)]
    assert not unprefixed, unprefixed[:5]


def test_ctrl_c_stops_everything_gracefully(make_run: MakeRun) -> None:
    run = make_run
    assert run.proc is not None
    assert run.http.call("GET", "/health")[0] == 200
    # A terminal's Ctrl-C: SIGINT to the whole foreground process group (make and supervisor).
    os.killpg(run.proc.pid, signal.SIGINT)
    run.proc.wait(timeout=120)
    assert "SIGINT received" in run.said("system")
    assert "Warm shutdown" in run.said("worker.1")
    assert_everyone_stopped_cleanly(run)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        run.http.call("GET", "/health")  # nothing listens any more
