"""Assertions shared by the API tests."""

from __future__ import annotations

from typing import Any


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The contract's error envelope with this status and code; returns the `error` object."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert set(error) <= {"code", "message", "details"}
    if "details" in error:
        assert error["details"], "details only where there are any"
        for item in error["details"]:
            assert set(item) == {"field", "message"}
    assert "Traceback" not in response.get_data(as_text=True)
    return error
