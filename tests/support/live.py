"""A real gunicorn serving the app on a free loopback port, for tests that need HTTP for real."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.backends import REDIS_URL
from tests.support.paths import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Http:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict | None = None,
        timeout: float = 10,
    ):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, dict(response.headers), _decoded(raw)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, dict(exc.headers), _decoded(raw)


def _decoded(raw: bytes) -> Any:
    """The JSON body; a body that is not JSON comes back as its text (a test then shows it)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


@contextmanager
def live_server(
    app: Flask, tmp_path: Path, **extra_env: str
) -> Iterator[tuple[Http, subprocess.Popen]]:
    """gunicorn (2 workers) on the test app's database; stopped with SIGTERM afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": REDIS_URL or "",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "INSTANCE_PATH": str(tmp_path),
        **extra_env,
    }
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    http = Http(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http.call("GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gunicorn did not come up: " + (tmp_path / "gunicorn.log").read_text()[-2000:])
    try:
        yield http, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.fixture
def server(app: Flask, tmp_path: Path) -> Iterator[tuple[Http, subprocess.Popen]]:
    with live_server(app, tmp_path) as running:
        yield running


# Load drills (tests/system/test_resilience_*.py) -----------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request of a drill: when it started (monotonic), how long it took, what came back."""

    op: str
    started: float
    seconds: float
    status: int
    headers: dict
    body: Any


class Recorder:
    """Timed HTTP calls from several threads, every answer kept (a connection error is status 0)."""

    def __init__(self, http: Http) -> None:
        self.http = http
        self.samples: list[Sample] = []
        self._lock = threading.Lock()

    def call(self, op: str, method: str, path: str, body: Any = None, headers: dict | None = None):
        started = time.monotonic()
        try:
            status, got_headers, got_body = self.http.call(method, path, body, headers, timeout=15)
        except (OSError, ValueError) as exc:  # refused, reset, timed out, not JSON
            status, got_headers, got_body = 0, {}, repr(exc)
        sample = Sample(op, started, time.monotonic() - started, status, got_headers, got_body)
        with self._lock:
            self.samples.append(sample)
        return status, got_headers, got_body

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.started < end]


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.99 = p99) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def run_clients(
    loops: list[Callable[[threading.Event], None]], stop: threading.Event
) -> list[threading.Thread]:
    """Start one daemon thread per loop; each runs until `stop` is set."""
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
    for thread in threads:
        thread.start()
    return threads
