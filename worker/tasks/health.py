"""A task that proves a worker is consuming the broker and can reach the database."""

from __future__ import annotations

import sqlalchemy as sa
from celery import shared_task

from app.core.context import current_request_id
from app.extensions import db


@shared_task(name="worker.ping")
def ping() -> dict[str, str | None]:
    db.session.execute(sa.text("SELECT 1"))
    db.session.remove()
    return {"status": "pong", "request_id": current_request_id()}
