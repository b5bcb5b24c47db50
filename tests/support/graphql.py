"""Calling /graphql from tests, reading its errors, and counting the SQL statements a request
sends (the N+1 guard and "refused queries never touch the database")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event

from app.extensions import db


def gql(
    client: FlaskClient,
    query: str,
    variables: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    operation_name: str | None = None,
    **kwargs: Any,
) -> Any:
    """POST /graphql; the response."""
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    if operation_name is not None:
        body["operationName"] = operation_name
    return client.post("/graphql", json=body, headers=headers or {}, **kwargs)


def codes(response: Any) -> list[str]:
    """The `extensions.code` of each error, in order (every error must carry one)."""
    body = response.get_json()
    text = response.get_data(as_text=True)
    assert "Traceback" not in text, text
    assert "sqlalchemy" not in text.lower(), text
    return [e["extensions"]["code"] for e in body.get("errors", [])]


def only_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """A GraphQL response with this status and exactly one error of this code; that error."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    assert codes(response) == [code], response.get_json()
    error: dict[str, Any] = response.get_json()["errors"][0]
    assert error["message"]
    for item in error["extensions"].get("details", []):
        assert set(item) == {"field", "message"}
    if status != 200:  # a whole-request error carries the contract's envelope too (§2)
        envelope = response.get_json()["error"]
        assert envelope["code"] == code
        assert envelope["message"] == error["message"]
        assert envelope.get("details", []) == error["extensions"].get("details", [])
    return error


class Statements:
    """Every SQL statement the app's engine sends while counting (SAVEPOINTs aside)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __len__(self) -> int:
        return len(self.sent)

    def on_execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sent.append(statement)


@contextmanager
def counting_statements(app: Flask) -> Iterator[Statements]:
    counted = Statements()
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", counted.on_execute)
    try:
        yield counted
    finally:
        event.remove(engine, "before_cursor_execute", counted.on_execute)
