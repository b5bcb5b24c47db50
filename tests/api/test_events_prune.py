"""Retention: `flask events prune --before DATE [--dry-run]`, and the append-only guard."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.core.db import utcnow
from app.extensions import db
from tests.support.assertions import assert_error
from tests.support.backends import ON_POSTGRES, needs_postgres
from tests.support.history import as_of, events_of, snapshots_of


@pytest.fixture(autouse=True)
def relayed(app: Any) -> Any:
    """These tests prune as though the relay had published every event: the outbox floor has
    its own test below (test_prune_never_deletes_what_the_outbox_still_holds)."""
    from app.core.retention import FLOOR_KEY

    kept = app.extensions.get(FLOOR_KEY)
    app.extensions[FLOOR_KEY] = lambda: None
    yield
    app.extensions[FLOOR_KEY] = kept


def _count(app: Any, table: str) -> int:
    with app.app_context():
        count = db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        db.session.remove()
        return int(count)


def _history(client: Any, account: Any) -> dict[str, Any]:
    """A post with three writes before a cut and two after; returns the bodies and the cut."""
    post = account.post_as("one")
    path = f"/api/posts/{post['id']}"
    early = [post]
    for title in ("two", "three"):
        early.append(
            client.patch(path, json={"title": title}, headers=account.headers).json["data"]
        )
    time.sleep(0.01)
    cut = utcnow()
    time.sleep(0.01)
    late = [
        client.patch(path, json={"title": title}, headers=account.headers).json["data"]
        for title in ("four", "five")
    ]
    return {"post": post, "path": path, "early": early, "late": late, "cut": cut}


def _prune(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["events", "prune", *args])


def test_dry_run_counts_and_changes_nothing(app, client, account) -> None:
    made = _history(client, account)
    before = {t: _count(app, t) for t in ("events", "snapshots")}
    result = _prune(app, "--before", made["cut"].isoformat(), "--dry-run")
    assert result.exit_code == 0, result.output
    # the account's user.created and the post's first three events
    assert "dry run: 4 events before" in result.output
    assert "from 2 users and posts" in result.output
    assert {t: _count(app, t) for t in ("events", "snapshots")} == before


def test_prune_keeps_what_history_promises(app, client, account) -> None:
    made = _history(client, account)
    path, cut = made["path"], made["cut"]
    result = _prune(app, "--before", cut.isoformat(), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "pruned 4 events before" in result.output
    assert "pruning events" in result.output  # the progress bar's label
    assert [e.aggregate_version for e in events_of(app, made["post"]["id"])] == [4, 5]
    # the state at the cut is kept as a horizon snapshot, built from the events
    (snapshot,) = snapshots_of(app, made["post"]["id"])
    assert snapshot[:2] == (3, True)
    # as_of from the last pruned write on answers as before ...
    for body in [made["early"][-1], *made["late"]]:
        answered = client.get(as_of(path, body["updated_at"]), headers=account.headers)
        assert answered.json["data"] == body
    # ... between the horizon and the cut too ...
    between = made["early"][-1]["updated_at"]
    assert (
        client.get(as_of(path, between), headers=account.headers).json["data"] == made["early"][-1]
    )
    # ... earlier than the horizon it says the history is no longer kept (422), and before the
    # post existed it is still 404
    pruned = client.get(as_of(path, made["early"][0]["updated_at"]), headers=account.headers)
    error = assert_error(pruned, 422, "UNPROCESSABLE")
    assert error["details"][0]["field"] == "as_of"
    assert_error(
        client.get(as_of(path, "2020-01-01T00:00:00Z"), headers=account.headers), 404, "NOT_FOUND"
    )
    # the audit trail lists what is kept, oldest first
    trail = client.get(f"{path}/events", headers=account.headers).json
    assert [e["version"] for e in trail["data"]] == [4, 5]
    assert trail["meta"]["total"] == 2
    # the gate is closed again, and a second prune finds nothing more
    assert _count(app, "events_prune_gate") == 0
    again = _prune(app, "--before", cut.isoformat())
    assert again.exit_code == 0
    assert "pruned 0 events" in again.output
    # the user (all of whose events were before the cut) still answers as_of from its horizon
    user = client.get(f"/api/users/{account.id}", headers=account.headers).json["data"]
    assert (
        client.get(
            as_of(f"/api/users/{account.id}", user["updated_at"]), headers=account.headers
        ).json["data"]
        == user
    )


def test_later_writes_and_snapshots_continue_from_the_horizon(make_app) -> None:
    from app.core.retention import FLOOR_KEY
    from tests import factories

    every2 = make_app(EVENTS_SNAPSHOT_EVERY=2)
    every2.extensions[FLOOR_KEY] = lambda: None  # as though the relay had published them all
    client = every2.test_client()
    account = factories.make_account(client, every2)
    made = _history(client, account)
    result = every2.test_cli_runner().invoke(
        args=["events", "prune", "--before", made["cut"].isoformat()]
    )
    assert result.exit_code == 0, result.output
    # snapshots below the horizon are gone: they would answer instants no longer kept
    assert [(v, h) for v, h, _s in snapshots_of(every2, made["post"]["id"])] == [
        (3, True),
        (4, False),
    ]
    body = made["late"][-1]
    for title in ("six", "seven"):
        body = client.patch(made["path"], json={"title": title}, headers=account.headers).json[
            "data"
        ]
    assert [v for v, _h, _s in snapshots_of(every2, made["post"]["id"])] == [3, 4, 6]
    assert (
        client.get(as_of(made["path"], body["updated_at"]), headers=account.headers).json["data"]
        == body
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([], "Missing option '--before'"),
        (["--before", "yesterday"], "is not a date"),
        (["--before", "2026-02-30"], "is not a date"),
        (["--before", "2999-01-01"], "is in the future"),
        (["--before", "2020-01-01", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_is_refused_as_a_usage_error(app, client, account, args, reason) -> None:
    before = _count(app, "events")
    result = _prune(app, *args)
    assert result.exit_code == 2, result.output
    assert reason in result.output
    assert "Traceback" not in result.output
    assert _count(app, "events") == before


def test_a_date_alone_is_midnight_utc(app, client, account) -> None:
    result = _prune(app, "--before", "2020-01-01", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "before 2020-01-01T00:00:00+00:00" in result.output


def test_the_database_still_refuses_ad_hoc_deletes_and_updates(app, client, account) -> None:
    made = _history(client, account)
    assert _prune(app, "--before", made["cut"].isoformat()).exit_code == 0
    with app.app_context():
        for statement in ("DELETE FROM events", "UPDATE events SET event_type = 'x'"):
            with pytest.raises(sa.exc.DatabaseError, match="append-only"):
                db.session.execute(sa.text(statement))
            db.session.rollback()
        db.session.remove()
    assert _count(app, "events") == 2


def test_the_gate_opens_only_for_events_older_than_its_cut(app, client, account) -> None:
    """Even inside a transaction holding a gate row, a newer event cannot be deleted."""
    cut = datetime(2000, 1, 1, tzinfo=UTC)
    with app.app_context():
        session = db.session
        txid = session.scalar(sa.text("SELECT txid_current()")) if ON_POSTGRES else None
        from app.core.events import EventsPruneGate

        session.execute(sa.insert(EventsPruneGate).values(older_than=cut, txid=txid))
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            session.execute(sa.text("DELETE FROM events"))
        session.rollback()
        session.remove()
    assert _count(app, "events") == 1


@needs_postgres
def test_a_committed_gate_row_opens_nothing_on_postgres(app, client, account) -> None:
    """On PostgreSQL the gate is bound to the transaction that opened it: a row left behind (or
    inserted by hand) lets no other transaction through."""
    with app.app_context():
        db.session.execute(
            sa.text("INSERT INTO events_prune_gate (older_than, txid) VALUES (:t, txid_current())"),
            {"t": utcnow() + timedelta(days=1)},
        )
        db.session.commit()
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            db.session.execute(sa.text("DELETE FROM events"))
        db.session.rollback()
        db.session.remove()
    assert _count(app, "events") == 1


def test_prune_leaves_events_the_floor_holds_back(app, client, account) -> None:
    """A registered floor (the outbox relay's last published id) keeps newer events."""
    from app.core.retention import FLOOR_KEY

    made = _history(client, account)
    app.extensions[FLOOR_KEY] = lambda: 1  # only the first event (the user's creation)
    try:
        result = _prune(app, "--before", made["cut"].isoformat())
    finally:
        app.extensions[FLOOR_KEY] = lambda: None
    assert result.exit_code == 0, result.output
    assert "pruned 1 events" in result.output
    assert events_of(app, account.id) == []  # the user's creation (event 1) went
    assert len(events_of(app, made["post"]["id"])) == 5  # the post's (2 to 6) are held back


def test_prune_never_deletes_what_the_outbox_still_holds(app, client, account) -> None:
    """The app's own floor: an event still waiting in the outbox, and every later one, stay."""
    from app.core.outbox import unpublished_floor
    from app.core.retention import FLOOR_KEY

    made = _history(client, account)
    with app.app_context():
        app.extensions[FLOOR_KEY] = lambda: unpublished_floor(db.session.connection())
        result = _prune(app, "--before", made["cut"].isoformat())
        assert result.exit_code == 0, result.output
        assert "pruned 0 events" in result.output or "nothing to prune" in result.output
        assert _count(app, "events") == 6
        # the relay publishes the first two events: only they may go
        db.session.execute(
            sa.text(
                "DELETE FROM outbox WHERE event_id IN "
                "(SELECT event_id FROM events ORDER BY id LIMIT 2)"
            )
        )
        db.session.commit()
        db.session.remove()
        result = _prune(app, "--before", made["cut"].isoformat())
    assert result.exit_code == 0, result.output
    assert _count(app, "events") == 4
