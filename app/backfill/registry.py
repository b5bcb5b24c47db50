"""Every backfill the CLI and the Celery task can run, by name: each domain registers its own
(`create_app` calls e.g. app/posts/backfills.py's `register`), so this machinery names none."""

from __future__ import annotations

from flask import Flask, current_app

from app.backfill.core import Backfill, BackfillError

REGISTRY_KEY = "backfills"


def register_backfill(app: Flask, backfill: Backfill) -> None:
    app.extensions.setdefault(REGISTRY_KEY, {})[backfill.name] = backfill


def backfills() -> dict[str, Backfill]:
    """Name -> declaration, as this app's domains registered them."""
    return dict(current_app.extensions.get(REGISTRY_KEY, {}))


def get_backfill(name: str) -> Backfill:
    found = backfills().get(name)
    if found is None:
        known = ", ".join(sorted(backfills())) or "none"
        raise BackfillError(f"unknown backfill {name!r} (known: {known})")
    return found
