"""What a log line of ours looks like: one JSON object with the required fields and a UTC
timestamp, and never a secret. Shared by the logging tests of every kind."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

REQUIRED = ("timestamp", "level", "logger", "event")


ACCESS_FIELDS = ("request_id", "method", "path", "route", "status", "duration_ms")


LIBRARY_LOGGERS = ("gunicorn.error", "gunicorn.access", "celery", "celery.task")


def secret(label: str) -> str:
    """A value unique enough that finding it in the output can only mean it leaked."""
    return f"{label}-{uuid.uuid4().hex}"


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON, each with the required fields and a UTC ISO timestamp."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        for field in REQUIRED:
            assert field in record, (field, line)
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() == timedelta(0), record["timestamp"]
        parsed.append(record)
    return parsed


def assert_absent(text: str, secrets: dict[str, str]) -> None:
    leaked = [label for label, value in secrets.items() if value and value in text]
    assert not leaked, f"secrets found in the log output: {leaked}"


def token_parts(token: str) -> dict[str, str]:
    """The token and its signature: neither may be logged (the header alone is public)."""
    parts = {"token": token}
    signature = token.rsplit(".", 1)[-1]
    if len(signature) >= 16:
        parts["signature"] = signature
    return parts
