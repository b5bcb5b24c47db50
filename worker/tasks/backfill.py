"""`backfill.run`: a backfill (app/backfill) in the worker, in bounded slices.

One task runs for at most BACKFILL_TASK_SECONDS (well under the worker's time limits, so a warm
shutdown never waits long), then re-queues itself; the checkpoint carries the position, so a
slice that dies (SIGKILL, a lost worker: acks_late re-delivers it) is simply resumed.

    celery -A worker call backfill.run --args '["post_slugs"]'
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from flask import current_app
from sqlalchemy.exc import OperationalError

from app.backfill import options_from_config, run_backfill
from app.backfill.checkpoint import DONE, AlreadyRunning
from app.backfill.registry import get_backfill
from app.extensions import celery, db

log = logging.getLogger(__name__)


@celery.task(
    name="backfill.run",
    bind=True,
    autoretry_for=(OperationalError,),  # database away or a lock timeout: the checkpoint holds
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=10,
)
def run_backfill_task(
    self: Task, name: str, batch_size: int | None = None, sleep_seconds: float | None = None
) -> dict[str, Any]:
    """Run NAME for one slice; re-queue the rest. Unknown names fail at once (BackfillError)."""
    backfill = get_backfill(name)
    lease = float(current_app.config["BACKFILL_LEASE_SECONDS"])
    try:
        result = run_backfill(
            backfill,
            db.engine,
            **options_from_config(
                current_app.config, batch_size=batch_size, sleep_seconds=sleep_seconds
            ),
            max_seconds=float(current_app.config["BACKFILL_TASK_SECONDS"]),
        )
    except AlreadyRunning as exc:
        # A live run (the CLI, another slice) is on it; look again once its lease could lapse,
        # in case it was a worker that died on another host.
        log.info("backfill_busy", extra={"backfill": name, "reason": str(exc)})
        raise self.retry(countdown=lease, exc=exc) from None
    if result.state != DONE:
        self.apply_async(
            args=(name,), kwargs={"batch_size": batch_size, "sleep_seconds": sleep_seconds}
        )
    return {
        "backfill": result.name,
        "state": result.state,
        "rows_written": result.rows_written,
        "batches": result.batches,
        "rows_done": result.rows_done,
    }
