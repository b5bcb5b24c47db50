"""The audit trail is keyed by the server's own request id (issue #13 item 12).

Bob sent the X-Request-ID of Alice's registration with his own update, and his event was filed
under her request. Now every request gets a fresh server id, the `request_id` of its events; a
client's well-formed id is kept beside it as `client_request_id`, still echoed in the response
header (contract §2) and still the `request_id` of the request's log lines (contract §7), which
carry the server's as `server_request_id`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.core.events import Event
from app.extensions import db
from tests.factories import PASSWORD, Account, unique


def events_of(app: Flask, public_id: str) -> list[dict[str, Any]]:
    """The aggregate's event rows, oldest first."""
    with app.app_context():
        rows = db.session.scalars(
            sa.select(Event).where(Event.aggregate_id == uuid.UUID(public_id)).order_by(Event.id)
        ).all()
        found = [
            {
                "type": row.event_type,
                "request_id": row.request_id,
                # getattr: a release without the column reads None (the test then fails)
                "client_request_id": getattr(row, "client_request_id", None),
            }
            for row in rows
        ]
        db.session.remove()
    return found


def access_line(caplog: pytest.LogCaptureFixture, path: str) -> logging.LogRecord:
    lines = [r for r in caplog.records if r.name == "app.access" and r.__dict__["path"] == path]
    assert len(lines) == 1, lines
    return lines[0]


def test_bob_cannot_file_his_update_under_alices_request_id(
    app: Flask, client: FlaskClient, make_account: Any
) -> None:
    alices_id = f"alice-signup-{uuid.uuid4().hex[:8]}"
    name = unique("alice")
    signup = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    registered = client.post("/api/users", json=signup, headers={"X-Request-ID": alices_id})
    assert registered.status_code == 201, registered.json
    alice = registered.json["data"]
    (created,) = events_of(app, alice["id"])
    assert created["type"] == "user.created"
    assert created["client_request_id"] == alices_id
    assert created["request_id"]
    assert created["request_id"] != alices_id

    bob: Account = make_account()
    patched = client.patch(
        f"/api/users/{bob.id}",
        json={"bio": "mine"},
        headers={**bob.headers, "X-Request-ID": alices_id},
    )
    assert patched.status_code == 200
    assert patched.headers["X-Request-ID"] == alices_id  # the client's own, echoed (§2)

    updated = events_of(app, bob.id)[-1]
    assert updated["type"] == "user.updated"
    assert updated["client_request_id"] == alices_id  # kept, marked as the client's
    assert updated["request_id"] not in (None, alices_id, created["request_id"])
    assert events_of(app, alice["id"]) == [created]  # Alice's trail is hers alone


def test_the_same_client_id_twice_gets_two_server_ids(
    app: Flask, client: FlaskClient, account: Account
) -> None:
    path = f"/api/users/{account.id}"
    headers = {**account.headers, "X-Request-ID": "retry-1"}
    for bio in ("first", "second"):
        response = client.patch(path, json={"bio": bio}, headers=headers)
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == "retry-1"

    first, second = events_of(app, account.id)[-2:]
    assert first["client_request_id"] == second["client_request_id"] == "retry-1"
    assert first["request_id"] != second["request_id"]
    assert "retry-1" not in (first["request_id"], second["request_id"])


def test_logs_carry_the_echoed_id_and_the_server_id_beside_it(
    app: Flask, client: FlaskClient, account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/api/users/{account.id}"
    with caplog.at_level(logging.INFO, logger="app.access"):
        sent = client.patch(
            path, json={"bio": "a"}, headers={**account.headers, "X-Request-ID": "mine-1"}
        )
        unsent = client.patch(path, json={"bio": "b"}, headers=account.headers)
    assert sent.status_code == unsent.status_code == 200
    first, second = events_of(app, account.id)[-2:]

    with_id, without_id = [r.__dict__ for r in caplog.records if r.name == "app.access"]
    # The line carries the id the response carried (contract §7) and joins the event on the
    # server's id beside it.
    assert with_id["request_id"] == sent.headers["X-Request-ID"] == "mine-1"
    assert with_id["server_request_id"] == first["request_id"] != "mine-1"
    assert first["client_request_id"] == "mine-1"

    # No client id: the header is the server's own, the one the event and the line carry.
    assert unsent.headers["X-Request-ID"] == second["request_id"] == without_id["request_id"]
    assert second["client_request_id"] is None
    assert "server_request_id" not in without_id
