"""Security events: one structured log line each, never with a secret in it.

Callers pass ids and reasons only (user public id, client IP, route, reason). Passwords,
tokens and Authorization headers never go in; the JSON formatter drops such keys anyway.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("app.security")


def security_event(event: str, **fields: Any) -> None:
    """Log `event` (e.g. "login_failed", "rate_limited") with its context fields."""
    log.warning(event, extra={"security_event": event, **fields})
