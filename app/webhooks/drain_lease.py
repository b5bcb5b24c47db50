"""The drain's lease per target (one drain per webhook at a time, anywhere): its name and store
(Redis, or the host's disk cache on the embedded default; app/core/leases.py)."""

from __future__ import annotations

import os
import uuid

from flask import current_app

from app.core.leases import Leases, shared_leases

LEASE_PREFIX = "postboard:webhooks:drain"


def lease_name(public_id: uuid.UUID | str) -> str:
    return f"{LEASE_PREFIX}:{public_id}"


def drain_leases() -> Leases:
    directory = os.path.join(str(current_app.config["CACHE_DIR"]), "webhook-leases")
    return shared_leases(current_app.config.get("REDIS_URL"), directory)


def drain_running(public_id: uuid.UUID) -> bool:
    """Whether a drain holds the target now (it will see what was committed before it ends:
    a drain looks again for due deliveries after it lets go of its lease)."""
    return drain_leases().held(lease_name(public_id))
