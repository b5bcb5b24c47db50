"""A redis-server of our own on a free port, for tests that kill, pause and restart Redis (never
the shared one)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.support.live import free_port


class OwnRedis:
    """A redis-server of our own on a free port, to kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    def start(self, *, persist: bool = False) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", str(self.directory), "--dbfilename", "dump.rdb"]
        if not persist:
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as probe:
                    if probe.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
