"""Backfills: fill a new column of a populated table online, in short batches, resumably.

A backfill is declared once (`Backfill`: a name, the rows still missing, how to compute a batch)
and registered by its domain with `app.backfill.registry`. The same runner (`run_backfill`) serves
`flask backfill run NAME`, the Celery task `backfill.run` and data migrations such as 0004: it
walks the table in primary-key order, one short transaction per batch, records a checkpoint in
`backfill_runs` with every batch, and resumes from it after a crash, a SIGKILL or a SIGTERM.

Nothing here imports ORM models: migrations call this code, and a migration must keep working
whatever the models become later.
"""

from app.backfill.core import (
    Backfill,
    BackfillError,
    RunResult,
    options_from_config,
    run_backfill,
)

__all__ = ["Backfill", "BackfillError", "RunResult", "options_from_config", "run_backfill"]
