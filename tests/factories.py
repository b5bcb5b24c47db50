"""Builders for test data: unique names, registered users, logged-in accounts, bearer headers,
and JWTs read or forged the way a client (or an attacker) could."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import jwt
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db
from tests.support.backends import ON_POSTGRES

PASSWORD = "correct horse battery"
# An id no row has. Fixed, not uuid4(): a parametrized test's ids must be the same in every
# pytest-xdist worker, or the workers refuse to run.
UNKNOWN_ID = "5b41c513-bb2d-4f16-9d47-e36d461d8007"
# A key that is not the app's, though long enough for HS256 to accept it.
WRONG_KEY = "not the key, though long enough for HS256 to accept it"


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def register(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    """POST /api/users with unique defaults; returns the created user's JSON."""
    name = fields.pop("username", None) or unique()
    body = {
        "email": fields.pop("email", f"{name}@example.com"),
        "username": name,
        "password": fields.pop("password", PASSWORD),
        **fields,
    }
    response = client.post("/api/users", json=body)
    assert response.status_code == 201, response.json
    return response.json["data"]


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.json
    return response.json["data"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Account:
    """A registered user with tokens, for tests that act as someone."""

    def __init__(self, client: FlaskClient, user: dict[str, Any], tokens: dict[str, Any]) -> None:
        self.client = client
        self.user = user
        self.id: str = user["id"]
        self.email: str = user["email"]
        self.tokens = tokens
        self.headers = bearer(tokens["access_token"])

    def post_as(self, title: str = "A post", **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            f"/api/users/{self.id}/posts", json={"title": title, **fields}, headers=self.headers
        )
        assert response.status_code == 201, response.json
        return response.json["data"]


def set_admin(app: Flask, user_id: str, value: bool = True) -> None:
    """Grant or take away admin straight in the database (the API has no way to)."""
    with app.app_context():
        db.session.execute(
            sa.text("UPDATE users SET is_admin = :v WHERE public_id = :p"),
            {"v": value, "p": user_id if ON_POSTGRES else uuid.UUID(user_id).hex},
        )
        db.session.commit()


def make_account(client: FlaskClient, app: Flask, *, admin: bool = False, **fields: Any) -> Account:
    """Register a user (admin if asked) and log them in."""
    user = register(client, **fields)
    if admin:
        set_admin(app, user["id"])
    return Account(client, user, login(client, user["email"]))


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's payload, read without checking the signature (as a client could)."""
    return jwt.decode(token, options={"verify_signature": False})


def b64url(data: dict[str, Any]) -> str:
    """One JSON segment of a hand-made JWT."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
