"""`flask seed --users N --posts-per-user M`: bulk demo data, with its events, fast."""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa
from flask.cli import with_appcontext

from app.core.db import utcnow
from app.core.security import passwords
from app.events.models import Event
from app.extensions import db
from app.posts.models import Post
from app.users.models import User

BATCH = 2000


@click.command("seed")
@click.option("--users", "n_users", type=click.IntRange(0, 10_000_000), default=100)
@click.option("--posts-per-user", type=click.IntRange(0, 10_000), default=5)
@click.option("--password", default=None, help="Password of every seeded user (random if omitted).")
@click.option("--batch-size", type=click.IntRange(1, 50_000), default=BATCH)
@with_appcontext
def seed_command(n_users: int, posts_per_user: int, password: str | None, batch_size: int) -> None:
    """Insert N users with M published posts each, in batched transactions, with a progress bar."""
    run = secrets.token_hex(3)
    shown_password = password or secrets.token_urlsafe(12)
    # One hash for every seeded user: hashing 100k passwords one by one would take an hour.
    password_hash = passwords.hash(shown_password)
    started = time.perf_counter()
    now = utcnow()
    made_posts = 0
    with click.progressbar(length=n_users, label=f"seeding {n_users} users") as bar:
        for start in range(0, n_users, batch_size):
            count = min(batch_size, n_users - start)
            made_posts += _seed_batch(run, start, count, posts_per_user, password_hash, now)
            bar.update(count)
    elapsed = time.perf_counter() - started
    rate = (n_users + made_posts) / elapsed if elapsed else 0
    click.echo(
        f"seeded {n_users} users and {made_posts} posts in {elapsed:.1f}s ({rate:,.0f} rows/s); "
        f"usernames seed_{run}_N, password: {shown_password}"
    )


def _seed_batch(
    run: str, start: int, count: int, posts_per_user: int, password_hash: str, now: Any
) -> int:
    session = db.session
    users = []
    for i in range(start, start + count):
        created = now - timedelta(seconds=i)
        users.append(
            {
                "public_id": uuid.uuid4(),
                "email": f"seed_{run}_{i}@example.test",
                "username": f"seed_{run}_{i}",
                "password_hash": password_hash,
                "display_name": f"Seed user {i}",
                "bio": "",
                "is_admin": False,
                "created_at": created,
                "updated_at": created,
                "version": 1,
            }
        )
    ids = session.scalars(
        sa.insert(User).returning(User.id, sort_by_parameter_order=True), users
    ).all()
    events = [_event("user.created", "user", u["public_id"], u, now) for u in users]
    posts = []
    for user_id, user in zip(ids, users, strict=True):
        for j in range(posts_per_user):
            created = user["created_at"] + timedelta(milliseconds=j + 1)
            posts.append(
                {
                    "public_id": uuid.uuid4(),
                    "author_id": user_id,
                    "title": f"Post {j} by {user['username']}",
                    "body": "Seeded post body.",
                    "status": "published",
                    "published_at": created,
                    "created_at": created,
                    "updated_at": created,
                    "version": 1,
                }
            )
            events.append(
                _event("post.created", "post", posts[-1]["public_id"], posts[-1], now, user)
            )
    if posts:
        session.execute(sa.insert(Post), posts)
    session.execute(sa.insert(Event), events)
    session.commit()
    return len(posts)


def _event(
    kind: str, aggregate: str, public_id: uuid.UUID, row: dict, now: Any, author: dict | None = None
) -> dict[str, Any]:
    fields = ("title", "body", "status") if aggregate == "post" else ("email", "username")
    values = {f: row[f] for f in fields}
    return {
        "event_type": kind,
        "aggregate_type": aggregate,
        "aggregate_id": public_id,
        "aggregate_version": 1,
        "actor_id": (author or row)["public_id"],
        "occurred_at": now,
        "request_id": None,
        "data": {"fields": sorted(values), "values": values},
    }
