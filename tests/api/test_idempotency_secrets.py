"""Idempotency keys keep nothing a database dump could use (issue #13 item 8): the request
fingerprint is keyed with a server secret (no offline password guessing against a bare SHA-256
of the body), the stored response is sealed (no email, id or body in the clear), and rows
written before this change, or under another SECRET_KEY, never break a retry."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.core.db import utcnow
from app.core.idempotency import HEADER, REPLAYED_HEADER, TABLE
from app.extensions import db
from tests.conftest import PASSWORD, assert_error, test_config, unique

SCOPE = "ip:127.0.0.1"  # the test client's address: anonymous registrations are keyed by it


def user_body() -> dict[str, Any]:
    name = unique("idem")
    return {"email": f"{name}@example.com", "username": name, "password": PASSWORD}


def keyed(key: str) -> dict[str, str]:
    return {HEADER: key}


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def unkeyed_fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    """What the code before this change stored: SHA-256 of the request, no secret involved."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), canonical.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def dump(app: Flask) -> list[dict[str, Any]]:
    """Every column of every idempotency row, as a database dump would show them."""
    with app.app_context():
        rows = db.session.execute(sa.select(TABLE)).mappings().all()
        db.session.remove()
    return [dict(row) for row in rows]


def as_text(row: dict[str, Any]) -> str:
    parts = []
    for value in row.values():
        if isinstance(value, bytes | memoryview):
            parts.append(bytes(value).decode("latin-1"))
        else:
            parts.append(json.dumps(value, default=str))
    return "\n".join(parts)


def insert_old_row(app: Flask, key: str, body: dict[str, Any], **values: Any) -> None:
    """A row as the code before this change wrote it: unkeyed fingerprint, response in clear."""
    now = utcnow()
    row = {
        "scope": SCOPE,
        "key": key,
        "fingerprint": unkeyed_fingerprint("POST", "/api/users", body),
        "state": "completed",
        "response_status": 201,
        "response_headers": {"Content-Type": "application/json", "Location": "/api/users/x"},
        "response_body": json.dumps({"data": {"email": body["email"]}}).encode(),
        "created_at": now - timedelta(minutes=1),
        "expires_at": now + timedelta(hours=23),
        **values,
    }
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.insert(TABLE).values(**row))


def test_a_dump_reveals_neither_the_password_nor_the_response(
    app: Flask, client: FlaskClient
) -> None:
    body, key = user_body(), new_key()
    first = client.post("/api/users", json=body, headers=keyed(key))
    assert first.status_code == 201, first.json
    user = first.json["data"]

    (row,) = dump(app)
    # The fingerprint cannot be recomputed without the server's secret.
    assert row["fingerprint"] != unkeyed_fingerprint("POST", "/api/users", body)
    assert row["fingerprint"] != hashlib.sha256(json.dumps(body).encode()).hexdigest()
    text = as_text(row)
    for private in (PASSWORD, body["email"], body["username"], user["id"], first.headers["ETag"]):
        assert private not in text, private
    assert b"password" not in bytes(row["response_body"])

    # Sealed, and still replayed byte for byte; another body under the key is still 422.
    again = client.post("/api/users", json=body, headers=keyed(key))
    assert again.status_code == 201
    assert again.headers[REPLAYED_HEADER] == "true"
    assert again.get_data() == first.get_data()
    for name in ("Location", "ETag", "Content-Type"):
        assert again.headers[name] == first.headers[name], name
    assert_error(
        client.post("/api/users", json=user_body(), headers=keyed(key)), 422, "UNPROCESSABLE"
    )


def test_a_completed_row_from_before_the_change_counts_as_absent(
    app: Flask, client: FlaskClient
) -> None:
    """Its unkeyed fingerprint is never compared and its clear response never replayed: the
    retry runs (here it registers), and the row is rewritten in the protected form."""
    body, key = user_body(), new_key()
    insert_old_row(app, key, body)

    retry = client.post("/api/users", json=body, headers=keyed(key))
    assert retry.status_code == 201, retry.json
    assert REPLAYED_HEADER not in retry.headers
    assert retry.json["data"]["email"] == body["email"]
    (row,) = dump(app)
    assert row["fingerprint"] != unkeyed_fingerprint("POST", "/api/users", body)
    assert row["response_headers"] is None
    assert body["email"] not in as_text(row)
    replay = client.post("/api/users", json=body, headers=keyed(key))
    assert replay.headers[REPLAYED_HEADER] == "true"
    assert replay.get_data() == retry.get_data()


def test_an_unfinished_row_from_before_the_change_still_holds_its_key(
    app: Flask, client: FlaskClient
) -> None:
    """An old process may still be running that request: 409 until its lock expires, not 422."""
    body, key = user_body(), new_key()
    now = utcnow()
    insert_old_row(
        app,
        key,
        body,
        state="in_progress",
        response_status=None,
        response_headers=None,
        response_body=None,
        created_at=now,
        expires_at=now + timedelta(seconds=60),
    )
    assert_error(client.post("/api/users", json=body, headers=keyed(key)), 409, "CONFLICT")
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.update(TABLE).values(expires_at=now - timedelta(seconds=1)))
    assert client.post("/api/users", json=body, headers=keyed(key)).status_code == 201


def test_a_tampered_stored_response_is_never_replayed(app: Flask, client: FlaskClient) -> None:
    body, key = user_body(), new_key()
    assert client.post("/api/users", json=body, headers=keyed(key)).status_code == 201
    (row,) = dump(app)
    forged = bytes(row["response_body"])[:-4] + b"AAAA"
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.update(TABLE).values(response_body=forged))
    # The retry runs again instead (the email is taken by now: a clean 409, never a 500).
    retry = client.post("/api/users", json=body, headers=keyed(key))
    assert_error(retry, 409, "CONFLICT")
    assert REPLAYED_HEADER not in retry.headers


def test_rows_sealed_under_another_secret_key_are_not_trusted(app: Flask) -> None:
    """After SECRET_KEY is rotated the old rows cannot be read: a retry runs again."""
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    before = create_app(test_config(uri, SECRET_KEY="a" * 48))
    after = create_app(test_config(uri, SECRET_KEY="b" * 48))
    body, key = user_body(), new_key()
    assert before.test_client().post("/api/users", json=body, headers=keyed(key)).status_code == 201
    retry = after.test_client().post("/api/users", json=body, headers=keyed(key))
    assert_error(retry, 409, "CONFLICT")  # ran again: the email is taken; not 422, not a 500
    other = user_body()
    fresh = after.test_client().post("/api/users", json=other, headers=keyed(new_key()))
    assert fresh.status_code == 201
    for application in (before, after):
        with application.app_context():
            db.engine.dispose()
