"""Backfills of the posts table (see app/backfill). Core table clauses only: migration 0004 runs
these too, and must keep working whatever the models become."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from flask import Flask

from app.backfill import Backfill
from app.backfill.registry import register_backfill
from app.posts.slugs import make_slug

posts = sa.table(
    "posts",
    sa.column("id", sa.BigInteger),
    sa.column("public_id", sa.Uuid),
    sa.column("title", sa.String),
    sa.column("slug", sa.String),
)


def compute_slugs(rows: Sequence[sa.Row[Any]]) -> dict[int, dict[str, str]]:
    """The slug of each row, from its current title and public id."""
    return {row.id: {"slug": make_slug(row.title, row.public_id)} for row in rows}


POST_SLUGS = Backfill(
    name="post_slugs",
    description="posts.slug from each post's title and public id (migration 0004)",
    table=posts,
    key=posts.c.id,
    # Soft-deleted posts too: the contract migration makes the column NOT NULL for every row.
    missing=posts.c.slug.is_(None),
    reads=(posts.c.public_id, posts.c.title),
    compute=compute_slugs,
)


def register(app: Flask) -> None:
    """`flask backfill ...` and the `backfill.run` task can run these."""
    register_backfill(app, POST_SLUGS)
