"""The error envelope's details cap (contract §6), on the one envelope builder and the flattener
of marshmallow's messages; the HTTP behaviour is tests/api/test_input_limits.py."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from app.core.errors import MAX_DETAILS, envelope, flatten_messages


def many_details() -> Iterator[dict[str, str]]:
    for i in itertools.count():  # endless: the envelope must stop reading on its own
        yield {"field": f"f{i}", "message": "Unknown field."}


def test_the_envelope_lists_at_most_fifty_details_and_says_so() -> None:
    error = envelope("VALIDATION_ERROR", "The request is not valid.", many_details())["error"]

    assert MAX_DETAILS == 50
    assert [d["field"] for d in error["details"]] == [f"f{i}" for i in range(50)]
    assert error["message"] == "The request is not valid (only the first 50 problems are listed)."


def test_fifty_details_are_listed_whole() -> None:
    details = list(itertools.islice(many_details(), 50))

    error = envelope("VALIDATION_ERROR", "The request is not valid.", details)["error"]

    assert error["details"] == details
    assert error["message"] == "The request is not valid."


def test_long_field_names_and_messages_are_cut() -> None:
    detail = {"field": "k" * 900_000, "message": "m" * 10_000}

    (shown,) = envelope("VALIDATION_ERROR", "Bad.", [detail])["error"]["details"]

    assert len(shown["field"]) == len(shown["message"]) == 200
    assert shown["field"].endswith("…")


def test_flattening_stops_after_one_more_than_the_cap() -> None:
    messages = {f"k{i}": ["Unknown field."] for i in range(60_000)}

    assert len(flatten_messages(messages)) == MAX_DETAILS + 1
    assert flatten_messages({"a": {"b": ["x"], "_schema": ["y"]}}) == [
        {"field": "a.b", "message": "x"},
        {"field": "a", "message": "y"},
    ]
