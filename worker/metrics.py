"""Celery task metrics: outcomes and run times, from Celery's signals, in the worker processes.

With `PROMETHEUS_MULTIPROC_DIR` set in the worker's environment (before it starts), the worker
writes under `<PROMETHEUS_MULTIPROC_DIR>/<nodename>/`, one file per pool process: its own
subdirectory, which its main process empties when it starts (`worker_init`, before the pool
forks), so several workers (replicas on a shared volume, or `-n` names on one host) can share
the base directory without wiping each other's files. The web's `/metrics` merges every
subdirectory when its `CELERY_METRICS_DIR` names the base directory. Without the variable the
numbers stay in the worker's memory, unexported.

Counted per task name: `succeeded`, `failed` (raised, or gave up retrying) and `retried` (each
retry scheduled), and the run time of every execution, an attempt that ends in a retry included.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import Any

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_success,
    worker_init,
    worker_process_shutdown,
)

from app.core.metrics import (
    CELERY_TASK_DURATION,
    CELERY_TASKS,
    MULTIPROC_ENV,
    clean_multiprocess_dir,
    multiprocess_dir,
)

log = logging.getLogger(__name__)
_started: dict[str, float] = {}  # task id -> perf_counter at task_prerun, in this process


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or "unknown")


@worker_init.connect
def _prepare_metrics_dir(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: this instance's own directory, emptied."""
    base = multiprocess_dir()
    if base is None:
        log.info("task_metrics_not_exported", extra={"reason": "PROMETHEUS_MULTIPROC_DIR unset"})
        return
    nodename = str(getattr(sender, "hostname", None) or socket.gethostname())
    directory = os.path.join(base, re.sub(r"[^A-Za-z0-9@._-]", "_", nodename))
    # prometheus_client reads the variable when a process opens its first sample file (none is
    # open yet: every metric has labels), and the pool processes forked from here inherit it.
    os.environ[MULTIPROC_ENV] = directory
    removed = clean_multiprocess_dir(directory)
    log.info("task_metrics_dir_ready", extra={"directory": directory, "stale_files": removed})


@worker_process_shutdown.connect
def _mark_dead(pid: int | None = None, **_: Any) -> None:
    """prometheus_client's bookkeeping for a pool process that exited (its counters stay)."""
    if (directory := multiprocess_dir()) is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), directory)


@task_prerun.connect
def _start_timer(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _observe_duration(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None) if task_id else None
    if started is not None:
        CELERY_TASK_DURATION.labels(task=_task_name(task)).observe(time.perf_counter() - started)


@task_success.connect
def _count_success(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.labels(task=_task_name(sender), outcome="succeeded").inc()


@task_failure.connect
def _count_failure(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.labels(task=_task_name(sender), outcome="failed").inc()


@task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    CELERY_TASKS.labels(task=_task_name(sender), outcome="retried").inc()
