"""What `flask seed` (app/cli/seed.py) runs: bulk demo data, with its events, fast.

PostgreSQL: `COPY ... FROM STDIN` (psycopg 3's `cursor.copy()`), user ids reserved from the
table's sequence so posts can name their author without a round trip per row. SQLite: batched
multi-row INSERTs (users, whose ids are needed, with RETURNING) and executemany for the rest.
One transaction per batch either way, so an interrupted seed leaves whole batches behind; the
next batch's rows are built in a thread while the current one is written. Only the columns the
database's current revision has are written (seeding before an expand migration works too).
"""

from __future__ import annotations

import functools
import json
import operator
import os
import secrets
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.core.db import utcnow
from app.core.events import Event
from app.core.security import passwords
from app.extensions import db
from app.posts.models import Post
from app.posts.slugs import slug_suffix, slug_words
from app.users.models import User

# What each seeded row's created event records (the API's create records the same).
USER_EVENT_FIELDS = (
    "email",
    "username",
    "display_name",
    "bio",
    "is_admin",
    "created_at",
    "updated_at",
)
POST_EVENT_FIELDS = (
    "title",
    "body",
    "status",
    "slug",
    "published_at",
    "created_at",
    "updated_at",
)

Row = dict[str, Any]


def seed(n_users: int, posts_per_user: int, password: str | None, batch_size: int) -> None:
    """Insert `n_users` users with `posts_per_user` published posts each (and their events), in
    batched transactions, with a progress bar; prints the summary."""
    run = secrets.token_hex(3)
    shown_password = password or secrets.token_urlsafe(12)
    # One hash for every seeded user: hashing 100k passwords one by one would take an hour.
    password_hash = passwords.hash(shown_password)
    seeder = Seeder(db.session.connection(), run=run, password_hash=password_hash)
    started = time.perf_counter()
    made_posts = 0
    label = f"seeding {n_users} users x {posts_per_user} posts ({seeder.method})"
    starts = range(0, n_users, batch_size)

    def build(start: int) -> Batch:
        return seeder.build(start, min(batch_size, n_users - start), posts_per_user)

    # The rows of the next batch are built in a thread while this one is written: building is
    # Python, writing mostly waits for the database (the GIL is released while it does).
    with (
        click.progressbar(length=n_users, label=label, show_pos=True) as bar,
        ThreadPoolExecutor(max_workers=1) as builder,
    ):
        pending = builder.submit(build, starts[0]) if starts else None
        for following in [*starts[1:], None]:
            if pending is None:
                break
            batch = pending.result()
            pending = builder.submit(build, following) if following is not None else None
            made_posts += seeder.write(batch)
            db.session.commit()
            seeder.connection = db.session.connection()
            bar.update(len(batch.users))
    elapsed = time.perf_counter() - started
    rows = n_users + made_posts
    seeder.analyze()
    db.session.commit()
    # Every user and post has its event: 2 x rows written in all.
    click.echo(
        f"seeded {n_users} users and {made_posts} posts (+{rows} events) in {elapsed:.1f}s: "
        f"{rows / elapsed if elapsed else 0:,.0f} users+posts/s, "
        f"{2 * rows / elapsed if elapsed else 0:,.0f} rows/s with events; "
        f"usernames seed_{run}_N, password: {shown_password}"
    )


@dataclass
class Batch:
    users: list[Row]
    posts: list[Row]
    events: list[Row]
    authors: list[int]  # for each post, the index of its author in `users`


class Seeder:
    """Builds the rows of one batch (users, their posts, one event each) and writes them."""

    def __init__(self, connection: Connection, *, run: str, password_hash: str) -> None:
        self.connection = connection
        self.run = run
        self.password_hash = password_hash
        self.now = utcnow()
        self.postgres = connection.dialect.name == "postgresql"
        self.method = "COPY" if self.postgres else "multi-row INSERT"
        # Write the columns this revision of the schema has: a seed at an older revision (a
        # benchmark seeding before an expand migration) skips columns that do not exist yet.
        inspector = sa.inspect(connection)
        self.columns = {
            table: {c["name"] for c in inspector.get_columns(table)}
            for table in ("users", "posts", "events")
        }

    # Rows ---------------------------------------------------------------------------------

    def user_row(self, i: int) -> Row:
        created = self.now - timedelta(seconds=i)
        return {
            "public_id": time_ordered_uuid(created),
            "email": f"seed_{self.run}_{i}@example.test",
            "username": f"seed_{self.run}_{i}",
            "password_hash": self.password_hash,
            "display_name": f"Seed user {i}",
            "bio": "",
            "is_admin": False,
            "created_at": created,
            "updated_at": created,
            "version": 1,
        }

    def post_row(self, author: Row, j: int) -> Row:
        created = author["created_at"] + timedelta(milliseconds=j + 1)
        public_id = time_ordered_uuid(created)
        # Titles repeat across users, so the slug's words (python-slugify, ~20 us a call) are
        # computed once per title: make_slug is exactly words + "-" + suffix (tests/test_scale.py
        # checks every seeded slug equals make_slug(title, public_id)).
        title = f"Seeded post {j + 1}"
        return {
            "public_id": public_id,
            "author_id": None,  # the author's id, known once the batch's users are written
            "title": title,
            "body": f"Seeded post body, by {author['username']}.",
            "status": "published",
            "published_at": created,
            "created_at": created,
            "updated_at": created,
            "version": 1,
            "slug": f"{_slug_words(title)}-{slug_suffix(public_id)}",
        }

    def event_row(self, kind: str, row: Row, author: Row | None = None) -> Row:
        """The `<kind>.created` event of a seeded row: every field of its representation, as
        the API's create records them, so history rebuilds it (app/core/history.py)."""
        fields = POST_EVENT_FIELDS if author is not None else USER_EVENT_FIELDS
        values = {f: _jsonable(row[f]) for f in fields}
        if author is not None:
            values["author_id"] = str(author["public_id"])
        return {
            "event_id": uuid.uuid4(),
            "event_type": kind,
            "aggregate_type": kind.split(".")[0],
            "aggregate_id": row["public_id"],
            "aggregate_version": 1,
            "actor_id": (author or row)["public_id"],
            "occurred_at": row["created_at"],  # the write's time: as_of=<created_at> finds it
            "request_id": None,
            "data": self._json({"fields": sorted(values), "values": values}),
        }

    def _json(self, value: dict[str, Any]) -> Any:
        # COPY's text format parses a json column from its text; SQLite's JSON type takes dicts.
        return json.dumps(value, separators=(",", ":")) if self.postgres else value

    # Writing ------------------------------------------------------------------------------

    def build(self, start: int, count: int, posts_per_user: int) -> Batch:
        """The rows of users start..start+count-1, their posts and all their events (no I/O)."""
        users = [self.user_row(i) for i in range(start, start + count)]
        events = [self.event_row("user.created", u) for u in users]
        posts: list[Row] = []
        authors: list[int] = []
        for n, user in enumerate(users):
            for j in range(posts_per_user):
                post = self.post_row(user, j)
                posts.append(post)
                authors.append(n)
                events.append(self.event_row("post.created", post, user))
        return Batch(users, posts, events, authors)

    def write(self, batch: Batch) -> int:
        """Write one batch in the current transaction; returns how many posts it held."""
        if self.postgres:
            # Demo data: a crash may lose the last batches' commits, never corrupt anything,
            # and not waiting for each WAL flush is free speed.
            self.connection.execute(sa.text("SET LOCAL synchronous_commit TO off"))
        ids = self._insert_users(batch.users)
        for post, n in zip(batch.posts, batch.authors, strict=True):
            post["author_id"] = ids[n]
        self._insert("posts", batch.posts)
        self._insert("events", batch.events)
        return len(batch.posts)

    def _insert_users(self, users: list[Row]) -> list[int]:
        if self.postgres:
            # Reserve the ids first: COPY cannot return them, and posts need their author's id.
            ids = list(
                self.connection.scalars(
                    sa.text(
                        "SELECT nextval(pg_get_serial_sequence('users', 'id')) "
                        "FROM generate_series(1, :n)"
                    ),
                    {"n": len(users)},
                )
            )
            for user_id, user in zip(ids, users, strict=True):
                user["id"] = user_id
            self._insert("users", users)
            return ids
        users_table = _table("users")
        return list(
            self.connection.scalars(
                sa.insert(users_table).returning(users_table.c.id, sort_by_parameter_order=True),
                [self._present("users", u) for u in users],
            )
        )

    def _insert(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        if self.postgres:
            self._copy(table, rows)
        else:
            self.connection.execute(
                sa.insert(_table(table)), [self._present(table, r) for r in rows]
            )

    def _present(self, table: str, row: Row) -> Row:
        return {k: v for k, v in row.items() if k in self.columns[table]}

    def _copy(self, table: str, rows: Sequence[Row]) -> None:
        names = [name for name in rows[0] if name in self.columns[table]]
        values = operator.itemgetter(*names)
        # Column names come from our own row builders, never from input.
        sql = f"COPY {table} ({', '.join(names)}) FROM STDIN"
        cursor = self.connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(values(row))
        finally:
            cursor.close()

    def analyze(self) -> None:
        """Fresh planner statistics after a bulk load (autovacuum would get there later)."""
        if self.postgres:
            self.connection.execute(sa.text("ANALYZE users, posts, events"))


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def time_ordered_uuid(when: datetime) -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds of `when`, then 74 random bits.

    Seeded rows get these instead of uuid4 so that their inserts into the public-id and event
    indexes land next to each other instead of all over the B-trees (measured: ~30% faster
    seeding at 400k posts, more as the indexes outgrow shared_buffers). The API itself keeps
    uuid4. Python 3.14 has `uuid.uuid7()` (wall clock only); six lines beat a dependency here.
    """
    ms = int(when.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) << 64) | (0b10 << 62)
    return uuid.UUID(int=value | (rand & ((1 << 62) - 1)))


_slug_words = functools.lru_cache(maxsize=1024)(slug_words)


def _table(name: str) -> sa.Table:
    """The mapped table (its column types convert UTC datetimes and JSON on SQLite)."""
    return {"users": User, "posts": Post, "events": Event}[name].metadata.tables[name]
