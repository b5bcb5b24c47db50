"""History in tests: as_of URLs, and each aggregate rebuilt from every one of its events beside
its current row, straight from the database."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from flask import Flask

from app.core.db import INCLUDE_DELETED
from app.core.events import Event, Snapshot
from app.core.history import Fold
from app.extensions import db
from app.posts.models import Post
from app.posts.representation import post_from_state, public_post
from app.users.models import User
from app.users.representation import private_user, private_user_from_state

# The fields of an event as the contract lists them (§8).
EVENT_KEYS = frozenset(
    {"id", "type", "aggregate", "actor_id", "occurred_at", "version", "changes", "request_id"}
)


def shift(instant: str, microseconds: float) -> str:
    """An ISO instant moved by some microseconds."""
    return (datetime.fromisoformat(instant) + timedelta(microseconds=microseconds)).isoformat()


def midpoint(a: str, b: str) -> str:
    """The instant halfway between two ISO instants."""
    start, end = datetime.fromisoformat(a), datetime.fromisoformat(b)
    return (start + (end - start) / 2).isoformat()


def trail(client: Any, path: str, account: Any, **query: Any) -> list[dict[str, Any]]:
    """The events of `path`'s resource as `account` reads them (one page)."""
    response = client.get(f"{path}/events", query_string=query, headers=account.headers)
    assert response.status_code == 200, response.json
    return list(response.json["data"])


def as_of(path: str, instant: str) -> str:
    """`path?as_of=<instant>`, the `+` of its offset encoded as a client must."""
    return f"{path}?as_of={quote(instant, safe='')}"


def events_of(app: Flask, public_id: str) -> list[Event]:
    """Every event of one aggregate, in version order (detached from the session)."""
    with app.app_context():
        rows = list(
            db.session.scalars(
                sa.select(Event)
                .where(Event.aggregate_id == uuid.UUID(public_id))
                .order_by(Event.aggregate_version)
            )
        )
        db.session.expunge_all()
        db.session.remove()
        return rows


def replayed(kind: str, public_id: str, events: list[Event]) -> tuple[dict[str, Any], bool]:
    """The representation every event of the aggregate folds to (from version 1, no snapshot,
    no gap allowed), and whether the events leave it deleted."""
    fold = Fold()
    for event in events:
        assert fold.apply(event), f"version {event.aggregate_version} after {fold.version}"
    render = private_user_from_state if kind == "user" else post_from_state
    return render(public_id, fold.version, fold.state), fold.deleted


def replayed_view(kind: str, public_id: str, events: list[Event]) -> dict[str, Any] | None:
    """`replayed`, None when the events leave it deleted."""
    view, deleted = replayed(kind, public_id, events)
    return None if deleted else view


def row_view(app: Flask, kind: str, public_id: str) -> tuple[dict[str, Any], bool]:
    """The current row's representation (the private one for a user), soft-deleted or not,
    and whether it is deleted."""
    with app.app_context():
        if kind == "user":
            stmt: Any = sa.select(User).where(User.public_id == uuid.UUID(public_id))
        else:
            stmt = (
                sa.select(Post)
                .join(Post.author)
                .options(sa.orm.contains_eager(Post.author))
                .where(Post.public_id == uuid.UUID(public_id))
            )
        row = db.session.scalar(stmt.execution_options(**{INCLUDE_DELETED: True}))
        assert row is not None, public_id
        view = private_user(row) if kind == "user" else public_post(row)
        deleted = row.deleted_at is not None
        db.session.remove()
        return view, deleted


def snapshots_of(app: Flask, public_id: str) -> list[tuple[int, bool, dict[str, Any]]]:
    """(version, horizon, state) of each snapshot of one aggregate, by version."""
    with app.app_context():
        rows = db.session.execute(
            sa.select(Snapshot.version, Snapshot.horizon, Snapshot.state)
            .where(Snapshot.aggregate_id == uuid.UUID(public_id))
            .order_by(Snapshot.version)
        ).all()
        db.session.remove()
        return [(v, bool(h), s) for v, h, s in rows]


def fold_states(events: list[Event]) -> dict[int, dict[str, Any]]:
    """The folded state after each version, from version 1."""
    fold, states = Fold(), {}
    for event in events:
        assert fold.apply(event)
        states[fold.version] = dict(fold.state)
    return states


def everything(app: Flask, kinds: dict[str, str]) -> dict[str, dict[str, Any]]:
    """For each aggregate (id -> "user" | "post"), in four queries: its events (version order),
    its snapshots (version, horizon, state), its row's representation and whether it is
    deleted."""
    ids = [uuid.UUID(i) for i in kinds]
    found: dict[str, dict[str, Any]] = {i: {"events": [], "snapshots": []} for i in kinds}
    with app.app_context():
        session = db.session
        for event in session.scalars(
            sa.select(Event).where(Event.aggregate_id.in_(ids)).order_by(Event.aggregate_version)
        ):
            found[str(event.aggregate_id)]["events"].append(event)
        for row in session.execute(
            sa.select(Snapshot.aggregate_id, Snapshot.version, Snapshot.horizon, Snapshot.state)
            .where(Snapshot.aggregate_id.in_(ids))
            .order_by(Snapshot.version)
        ):
            found[str(row.aggregate_id)]["snapshots"].append((row.version, row.horizon, row.state))
        users = session.scalars(
            sa.select(User)
            .where(User.public_id.in_(ids))
            .execution_options(**{INCLUDE_DELETED: True})
        )
        for user in users:
            found[str(user.public_id)]["row"] = (private_user(user), user.deleted_at is not None)
        posts = session.scalars(
            sa.select(Post)
            .join(Post.author)
            .options(sa.orm.contains_eager(Post.author))
            .where(Post.public_id.in_(ids))
            .execution_options(**{INCLUDE_DELETED: True})
        )
        for post in posts:
            found[str(post.public_id)]["row"] = (public_post(post), post.deleted_at is not None)
        session.expunge_all()
        session.remove()
    return found
