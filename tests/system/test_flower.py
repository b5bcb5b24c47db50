"""Flower as docker-compose.yml starts it, run for real here against the embedded broker (the
compose file's other checks only read it: tests/unit/test_compose.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.support.paths import ROOT

SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_flower_command_starts_for_real(tmp_path: Path) -> None:
    """The compose command, run here against the embedded broker: Flower answers its health
    check under its url prefix and keeps its dashboard behind the basic auth the compose file
    requires."""
    import base64
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.support.live import free_port

    port = free_port()
    command = [
        a for a in SERVICES["flower"]["command"] if not a.startswith(("--address", "--port"))
    ]
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'flower.sqlite3'}",
        "FLOWER_BASIC_AUTH": "ops:not-a-real-secret",
    }
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    celery = str(Path(sys.executable).with_name("celery"))
    proc = subprocess.Popen(
        [celery, *command[1:], "--address=127.0.0.1", f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # It serves under the prefix the gateway routes to it (deploy/nginx/, location /flower/).
    prefix = next(a.split("=", 1)[1] for a in command if a.startswith("--url_prefix="))
    assert prefix == "flower"
    base = f"http://127.0.0.1:{port}/{prefix}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthcheck", timeout=2) as response:
                    assert response.read() == b"OK"
                    break
            except OSError:
                assert time.monotonic() < deadline, "flower did not come up"
                time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(base + "/")
        token = base64.b64encode(b"ops:not-a-real-secret").decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        # Flower's own shutdown speed is not what this test checks (it may still be waiting
        # on a broker inspection): a kill after a grace period keeps the run bounded.
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
