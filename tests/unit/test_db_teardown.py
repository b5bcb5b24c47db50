"""The teardown that ends a request's session never fails the answer (app/core/db.py)."""

from __future__ import annotations

import sqlalchemy as sa

from app.core.db import remove_session_quietly


class _Registry:
    def __init__(self) -> None:
        self.cleared = False

    def clear(self) -> None:
        self.cleared = True


class _DeadSession:
    """A scoped session whose connection died: closing it raises, as psycopg does then."""

    def __init__(self) -> None:
        self.registry = _Registry()

    def remove(self) -> None:
        raise sa.exc.OperationalError("ROLLBACK", {}, Exception("server closed the connection"))


def test_a_dead_connection_at_teardown_is_dropped_not_raised() -> None:
    session = _DeadSession()
    remove_session_quietly(session)  # raised before: gunicorn then answered its HTML 500
    assert session.registry.cleared


def test_a_healthy_session_is_removed() -> None:
    removed = []

    class _Session:
        registry = _Registry()

        def remove(self) -> None:
            removed.append(True)

    remove_session_quietly(_Session())
    assert removed == [True]
    assert not _Session.registry.cleared
