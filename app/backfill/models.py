"""`backfill_runs` in the app's metadata, so the model-vs-DDL check covers it.

The code that reads and writes it (app/backfill/checkpoint.py) uses a Core table clause instead:
migrations call that code, and must not depend on the models.
"""

from __future__ import annotations

import sqlalchemy as sa

from app.backfill.checkpoint import STATES
from app.core.db import Base, UTCDateTime

backfill_runs = sa.Table(
    "backfill_runs",
    Base.metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("last_key", sa.BigInteger, nullable=True),
    sa.Column("rows_done", sa.BigInteger, nullable=False),
    sa.Column("batches", sa.BigInteger, nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.CheckConstraint(
        "state IN ({})".format(", ".join(f"'{s}'" for s in STATES)), name="state_valid"
    ),
)
