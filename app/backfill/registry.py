"""Every backfill the CLI and the Celery task can run, by name."""

from __future__ import annotations

from app.backfill.core import Backfill, BackfillError


def backfills() -> dict[str, Backfill]:
    """Name -> declaration. Add new backfills here (imported lazily: no import cycles)."""
    from app.posts.backfills import POST_SLUGS

    return {b.name: b for b in (POST_SLUGS,)}


def get_backfill(name: str) -> Backfill:
    found = backfills().get(name)
    if found is None:
        known = ", ".join(sorted(backfills())) or "none"
        raise BackfillError(f"unknown backfill {name!r} (known: {known})")
    return found
