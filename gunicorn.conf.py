"""gunicorn settings, all from the environment (see .env.example)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
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
# The master builds the app once and forks the workers from it: they start at once, instead of
# each importing and building it (on two cores next to Celery, ~1 s off the time to /ready).
# Building opens no connection and starts no thread (the engine, Redis clients and Celery's
# pools connect on first use, in a worker: tests/system/test_process_startup.py), and the master
# never publishes a task. A code change needs a restart: HUP re-forks the same app.
preload_app = True

# Prometheus multiprocess mode (app/core/metrics.py): every worker writes its samples to files in
# PROMETHEUS_MULTIPROC_DIR and /metrics merges them, whichever worker answers. Set it in the
# environment (Procfile, compose); if it is not, the master makes a private directory here,
# before any worker (and so any prometheus_client import) exists, and removes it on exit.
# Underscored names: gunicorn reads this module's public names as settings.
_own_metrics_dir: str | None = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="postboard-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


# Every line as JSON on stdout, master and workers alike (app/core/logging.py). Imported after
# PROMETHEUS_MULTIPROC_DIR is settled above, so nothing the import pulls in sees it unset.
from app.core.logging import gunicorn_logconfig_dict  # noqa: E402

logconfig_dict = gunicorn_logconfig_dict(loglevel)


def on_starting(server: Any) -> None:
    """Master, before the first fork: empty the metrics directory of a previous run's files (and
    of the master's own, from building the app: each worker writes its own as it starts)."""
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(directory, exist_ok=True)
    stale = glob.glob(os.path.join(directory, "*.db"))  # as app.core.metrics.clean_multiprocess_dir
    for path in stale:  # (not imported: the master stays free of the app's modules)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    server.log.info("metrics directory %s ready (%d stale files removed)", directory, len(stale))


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker exited (stopped, crashed or recycled): prometheus_client's
    bookkeeping for a dead process. Its counter files stay, so totals never go down."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server: Any) -> None:
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


def when_ready(server: Any) -> None:
    """Master, before the first fork: import the tracing machinery once, so that no worker
    pays for it (it is set up in each worker, after the fork: post_worker_init)."""
    from app.core import tracing

    if not tracing.disabled():
        tracing.preload()


def post_worker_init(worker: Any) -> None:
    """From SIGTERM on, this worker's /ready answers 503 `draining` while it finishes its work;
    its metric files, zero series included, are written before it serves (preload_app); and
    its tracing is set up here, after the fork (an exporter's thread started in the master
    would not exist in this process)."""
    import signal

    from app.core.metrics import claim_after_fork
    from app.core.tracing import setup_tracing
    from app.ops.draining import drain_on

    drain_on(signal.SIGTERM)
    claim_after_fork()
    setup_tracing("web", flask_app=getattr(worker, "wsgi", None))


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's database and Redis pools as it stops, its last spans exported."""
    try:
        from app.core.redis_client import close_all
        from app.core.tracing import flush_tracing

        flush_tracing()
        from app.extensions import db

        app = getattr(worker, "wsgi", None)
        if app is not None and hasattr(app, "app_context"):
            with app.app_context():
                db.engine.dispose()
        close_all()
    except Exception as exc:  # never block a worker's exit on cleanup
        server.log.warning("worker_exit cleanup failed: %s", exc)
