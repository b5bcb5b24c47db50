"""`as_of` cost against history length (issue #15): one command, measured side by side.

    .venv/bin/python -m bench.as_of                        # the embedded default (SQLite)
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/pb_hist \\
        .venv/bin/python -m bench.as_of

In a scratch database migrated to head (a temporary SQLite file, or a PostgreSQL database
created beside DATABASE_URL and dropped afterwards), one author writes:

- SHORT: a post with 10 events (created, then 9 title changes);
- LONG: a post with 10,000 events, written the way the API writes them (PostService.update, one
  transaction each), so the unit of work leaves a snapshot every EVENTS_SNAPSHOT_EVERY (100);
- FLAT (unless --no-contrast): 10,000 events written with snapshots off, to show what a replay
  costs without them.

Then `GET /api/posts/{id}?as_of=T` through the Flask test client (the whole request pipeline:
token check, view, snapshot read, replay, JSON), as the author, T drawn evenly from each post's
own recorded instants (each write's `updated_at`) plus "now"; every answer is checked against
the version written at T. Rounds interleave the posts (R requests each per round), so a busy
machine slows all alike; the report is the median per request over all rounds, and the ratio
LONG / SHORT (target: at most 2).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Flask
from flask_migrate import upgrade

from app import create_app
from app.core.security import Principal
from app.extensions import db
from app.posts.service import PostService
from app.users.models import User
from tests.support.backends import test_config
from tests.support.scratch_db import scratch_database

PASSWORD = "bench-password-1"  # noqa: S105  # nosec B105 # a throwaway bench account


def build(app: Flask) -> tuple[str, dict[str, str]]:
    """The author's id and bearer header (registered and logged in through the API)."""
    client = app.test_client()
    name = f"bench{uuid.uuid4().hex[:8]}"
    email = f"{name}@example.test"
    user = client.post("/api/users", json={"email": email, "username": name, "password": PASSWORD})
    token = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    return user.json["data"]["id"], {
        "Authorization": f"Bearer {token.json['data']['access_token']}"
    }


def write_histories(
    apps: dict[str, Flask], author: str, events: dict[str, int], block: int = 500
) -> dict[str, tuple[str, list[str], float]]:
    """A post per label with `events[label]` events, written through PostService (one
    transaction each) by that label's app, the labels taking turns `block` writes at a time, in
    an order that alternates (a busy machine, or a warm cache, favours none). Returns each
    post's id, the `updated_at` of each version and the seconds its writes took."""
    state: dict[str, dict[str, Any]] = {}
    for label, app in apps.items():
        with app.app_context():
            user = db.session.query(User).filter_by(public_id=uuid.UUID(author)).one()
            actor = Principal(user.id, user.public_id)
            post = PostService.from_app().create(
                user.public_id, {"title": f"{label} 1", "body": "b"}, actor=actor
            )
            state[label] = {"id": post.public_id, "actor": actor, "seconds": 0.0}
            state[label]["instants"] = [post.updated_at.isoformat()]
            db.session.remove()
    turn = 0
    while any(len(state[label]["instants"]) < events[label] for label in apps):
        turn += 1
        order = list(apps.items())
        for label, app in order if turn % 2 else reversed(order):  # who goes first alternates
            mine = state[label]
            todo = min(block, events[label] - len(mine["instants"]))
            if todo <= 0:
                continue
            with app.app_context():
                service = PostService.from_app()
                started = time.perf_counter()
                for _ in range(todo):
                    n = len(mine["instants"]) + 1
                    post = service.update(
                        mine["id"], {"title": f"{label} {n}"}, actor=mine["actor"]
                    )
                    mine["instants"].append(post.updated_at.isoformat())
                mine["seconds"] += time.perf_counter() - started
                db.session.remove()
        done = ", ".join(f"{label} {len(state[label]['instants'])}" for label in apps)
        print(f"  written: {done}", flush=True)
    return {label: (str(v["id"]), v["instants"], v["seconds"]) for label, v in state.items()}


def measure(
    app: Flask,
    headers: dict[str, str],
    posts: dict[str, tuple[str, list[str]]],
    rounds: int,
    per_round: int,
    seed: int,
) -> dict[str, list[float]]:
    """Seconds per as_of request, per post, rounds interleaved; every answer checked."""
    client = app.test_client()
    rng = random.Random(seed)
    timings: dict[str, list[float]] = {label: [] for label in posts}
    for _round in range(rounds):
        for label, (public_id, instants) in posts.items():
            # FLAT replays up to 10,000 events a request: a tenth of the requests tell its median
            for _ in range(per_round if label != "FLAT" else max(2, per_round // 10)):
                version = rng.randrange(len(instants) + 1)  # len(instants): "now"
                instant = instants[version] if version < len(instants) else _now()
                expected = min(version + 1, len(instants))
                url = f"/api/posts/{public_id}?as_of={quote(instant, safe='')}"
                started = time.perf_counter()
                response = client.get(url, headers=headers)
                timings[label].append(time.perf_counter() - started)
                assert response.status_code == 200, response.get_data(as_text=True)
                assert response.json["data"]["version"] == expected, (label, instant)
    return timings


def _now() -> str:
    from app.core.db import utcnow

    return utcnow().isoformat()


def report(timings: dict[str, list[float]], counts: dict[str, int], every: int) -> str:
    rows = [
        "| post | events | as_of median | p90 |",
        "|---|---|---|---|",
    ]
    medians = {}
    for label, values in timings.items():
        medians[label] = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        median = f"{medians[label] * 1000:.2f} ms"
        rows.append(f"| {label} | {counts[label]:,} | {median} | {p90 * 1000:.2f} ms |")
    ratio = medians["LONG"] / medians["SHORT"]
    rows.append("")
    rows.append(f"LONG / SHORT = **{ratio:.2f}** (target <= 2; snapshot every {every} events)")
    if "FLAT" in medians:
        rows.append(f"FLAT / SHORT = {medians['FLAT'] / medians['SHORT']:.2f} (no snapshots)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events of the LONG post")
    parser.add_argument("--short", type=int, default=10, help="events of the SHORT post")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--no-contrast", action="store_true", help="skip the FLAT post")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL")
    backend = "PostgreSQL" if database_url else "SQLite (embedded default)"
    with (
        tempfile.TemporaryDirectory() as workdir,
        scratch_database(database_url, Path(workdir), "asof") as uri,
    ):
        app = create_app(test_config(uri, CACHE_ENABLED=False))
        flat_app = create_app(test_config(uri, CACHE_ENABLED=False, EVENTS_SNAPSHOT_EVERY=10**9))
        with app.app_context():
            upgrade()
        every = int(app.config["EVENTS_SNAPSHOT_EVERY"])
        author, headers = build(app)
        print(f"writing histories on {backend} ...", flush=True)
        apps = {"SHORT": app, "LONG": app}
        if not args.no_contrast:
            apps["FLAT"] = flat_app
        sizes = {"SHORT": args.short, "LONG": args.events, "FLAT": args.events}
        written = write_histories(apps, author, sizes)
        posts = {
            label: (public_id, instants) for label, (public_id, instants, _s) in written.items()
        }
        counts = {label: len(instants) for label, (_id, instants) in posts.items()}
        write_rates = {
            label: (len(instants) - 1) / seconds
            for label, (_id, instants, seconds) in written.items()
            if seconds
        }
        measure(app, headers, posts, 1, 10, args.seed)  # warm-up: imports, caches, plans
        timings = measure(app, headers, posts, args.rounds, args.per_round, args.seed)
        for one in (app, flat_app):
            with one.app_context():
                db.engine.dispose()
    print()
    print(f"as_of on {backend}: {args.rounds} rounds x {args.per_round} requests per post")
    print(report(timings, counts, every))
    if "FLAT" in write_rates:
        print(
            f"writes (PostService.update, interleaved): {write_rates['LONG']:,.0f}/s with a "
            f"snapshot every {every}, {write_rates['FLAT']:,.0f}/s without snapshots "
            f"(ratio {write_rates['LONG'] / write_rates['FLAT']:.2f})"
        )


if __name__ == "__main__":
    main()
