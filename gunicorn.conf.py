"""gunicorn settings, all from the environment (see .env.example)."""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 50
# gunicorn answers an over-long request line itself, in HTML; the app enforces its own limit
# (8 KiB, a JSON 414) instead. A fronting proxy should cap request lines as well.
limit_request_line = 0
# Our app logs every request as JSON; gunicorn's access log would repeat it in another format.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn 25.1+ opens a control socket under ~/.gunicorn by default: several instances under one
# user (tests, scaled-out hosts) would fight over it, and HOME may be read-only in a container.
control_socket_disable = True
# Tasks are never published from the master (kombu's producer pool is not fork-safe).
preload_app = False


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's database and Redis pools as it stops."""
    try:
        from app.core.redis_client import close_all
        from app.extensions import db

        app = getattr(worker, "wsgi", None)
        if app is not None and hasattr(app, "app_context"):
            with app.app_context():
                db.engine.dispose()
        close_all()
    except Exception as exc:  # never block a worker's exit on cleanup
        server.log.warning("worker_exit cleanup failed: %s", exc)
