"""System drill: PostgreSQL stops, starts and restarts under light load.

See docs/operations-failures.md.

A throwaway cluster of the test's own (initdb in a temp dir, its own port; never the shared
server) is migrated, a real gunicorn serves it, and client threads read and write while the test
runs `pg_ctl stop -m fast`, `start` and `restart -m fast`. Every answer must be a 2xx or a 503
SERVICE_UNAVAILABLE envelope with Retry-After (never a 500, never a dropped connection), and the
service must resume by itself within a few seconds of the database being back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask

from app import create_app
from app.extensions import db
from tests.factories import PASSWORD, unique
from tests.support.backends import needs_postgres, test_config
from tests.support.live import Recorder, Sample, free_port, live_server, run_clients


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    versions = sorted(root.iterdir(), key=lambda p: int(p.name)) if root.is_dir() else []
    for version in reversed(versions):
        if (version / "bin" / "initdb").exists():
            return version / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


PG_BIN = _pg_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # a latency drill: make test runs it alone, after the parallel part
    needs_postgres,
    pytest.mark.skipif(PG_BIN is None, reason="needs PostgreSQL's initdb and pg_ctl"),
]
RESUME_WITHIN_SECONDS = 5.0


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temp dir on a free port, controlled with pg_ctl."""

    def __init__(self) -> None:
        # A short path: the Unix socket lives there too (socket paths are limited to ~100 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="pgdrill-"))
        self.data = self.dir / "data"
        self.port = free_port()
        # initdb refuses to run as root: run the cluster as the postgres system user then.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, *args], check=True, capture_output=True, timeout=60, cwd=self.dir
        )

    def pg_ctl(self, action: str) -> None:
        options = ["-o", f"-p {self.port} -k {self.dir}", "-l", str(self.dir / "log")]
        mode = ["-m", "fast"] if action in ("stop", "restart") else []
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), *options, *mode, "-w", action)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.pg_ctl("start")
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE drill")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/drill"

    def destroy(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.init()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def drill_app(throwaway_postgres: ThrowawayPostgres) -> Flask:
    from flask_migrate import upgrade

    application = create_app(test_config(throwaway_postgres.url))
    with application.app_context():
        upgrade()
        db.engine.dispose()
    return application


def acceptable(sample: Sample) -> bool:
    """2xx; or the contract's 503 (the envelope with Retry-After, /health's unhealthy body)."""
    if 200 <= sample.status < 300:
        return True
    if sample.status != 503 or not isinstance(sample.body, dict):
        return False
    if sample.op == "health":
        return sample.body.get("status") == "unhealthy"
    return (
        sample.body.get("error", {}).get("code") == "SERVICE_UNAVAILABLE"
        and int(sample.headers.get("Retry-After", "0")) > 0
    )


def test_postgres_stop_start_restart_gives_503s_then_resumes(
    drill_app: Flask, tmp_path: Path, throwaway_postgres: ThrowawayPostgres
) -> None:
    env = {"REDIS_URL": "", "CACHE_ENABLED": "false"}  # every request goes to the database
    with live_server(drill_app, tmp_path, **env) as (http, _proc):
        recorder = Recorder(http)
        name = unique("pg")
        _, _, body = http.call(
            "POST",
            "/api/users",
            {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        )
        user_id = body["data"]["id"]
        _, _, body = http.call(
            "POST", "/api/auth/login", {"email": f"{name}@example.com", "password": PASSWORD}
        )
        headers = {"Authorization": f"Bearer {body['data']['access_token']}"}

        def writer(stop: threading.Event) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                recorder.call(
                    "write", "POST", f"/api/users/{user_id}/posts", {"title": f"p{n}"}, headers
                )
                recorder.call("read", "GET", "/api/me", headers=headers)
                time.sleep(0.02)

        def reader(stop: threading.Event) -> None:
            while not stop.is_set():
                recorder.call("read", "GET", f"/api/users/{user_id}")
                recorder.call("read", "GET", "/api/posts?per_page=5")
                recorder.call("health", "GET", "/health")
                time.sleep(0.02)

        stop = threading.Event()
        threads = run_clients([writer, reader], stop)
        back: list[float] = []
        try:
            time.sleep(1.0)
            throwaway_postgres.pg_ctl("stop")
            time.sleep(3.0)
            throwaway_postgres.pg_ctl("start")
            back.append(time.monotonic())
            time.sleep(RESUME_WITHIN_SECONDS)
            restart_at = time.monotonic()  # the first window ends here: the restart stops it again
            throwaway_postgres.pg_ctl("restart")
            back.append(time.monotonic())
            time.sleep(RESUME_WITHIN_SECONDS)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    samples = recorder.between(0, float("inf"))
    bad = [(s.op, s.status, s.body) for s in samples if not acceptable(s)]
    assert not bad, bad[:5]
    unavailable = [s for s in samples if s.status == 503]
    assert unavailable, "the drill never saw the database down"
    for when, until in zip(back, (restart_at, back[-1] + RESUME_WITHIN_SECONDS), strict=True):
        # Resumed: from some point within the window on, every request of every kind succeeds.
        # Only answers given before the next outage began: one in flight at the restart is its.
        after = [
            s
            for s in recorder.between(when, min(until, when + RESUME_WITHIN_SECONDS))
            if s.started + s.seconds < until
        ]
        failing = [s.started for s in after if s.status == 503]
        resumed = (max(failing) - when) if failing else 0.0
        tail = [s for s in after if s.started > when + resumed]
        first_write = min((s.started + s.seconds for s in after if s.status == 201), default=0)
        print(
            f"\npostgres back: last 503 {resumed * 1000:.0f} ms after pg_ctl returned, first "
            f"write acknowledged {(first_write - when) * 1000:.0f} ms after; {len(tail)} 2xx after"
        )
        late = sorted(
            {
                (s.op, s.body.get("status") or s.body.get("error", {}).get("message"))
                for s in after
                if s.status == 503 and s.started > when + 1.0 and isinstance(s.body, dict)
            }
        )
        assert resumed < RESUME_WITHIN_SECONDS - 1.0, late
        assert len(tail) >= 5
    codes: dict[Any, int] = {}
    for s in samples:
        codes[s.status] = codes.get(s.status, 0) + 1
    print(f"statuses over the drill: {codes}")
