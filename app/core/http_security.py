"""HTTP hardening: CORS, security headers, response compression."""

from __future__ import annotations

from flask import Flask


def init_http_security(app: Flask) -> None:
    """Wire CORS, security headers and compression into `app`."""
