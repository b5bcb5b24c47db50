"""An app with small rate limits, and requests from client addresses of their own."""

from __future__ import annotations

import itertools
import time

from flask import Flask

from app import create_app
from tests.support.backends import test_config

_ips = itertools.count(1)


def fresh_ip() -> str:
    """An address no other test used, so counters in a shared Redis never collide."""
    n = next(_ips) + int(time.time() * 1000) % 50000
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def limited_app(app: Flask, **overrides: object) -> Flask:
    config = {
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_ANONYMOUS": "5/minute",
        "RATELIMIT_AUTHENTICATED": "8/minute",
        "RATELIMIT_LOGIN": "3/minute",
        "RATELIMIT_REGISTER": "2/minute",
        **overrides,
    }
    return create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **config))


def get(client, path: str, ip: str, **headers: str):
    return client.get(path, environ_base={"REMOTE_ADDR": ip}, headers=headers)
