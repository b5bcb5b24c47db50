"""Fixtures for the system tests: real processes and servers of their own."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import OwnRedis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A private redis-server, to kill and restart (the shared one is never touched)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: these tests start and kill their own Redis")
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
