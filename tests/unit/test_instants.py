"""`parse_instant`: what `?as_of=` accepts (RFC 3339 date-times, with an offset) and refuses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.history import INSTANT_FORMAT, parse_instant


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2026-11-21T04:12:00Z", datetime(2026, 11, 21, 4, 12, tzinfo=UTC)),
        ("2026-11-21T06:12:00+02:00", datetime(2026, 11, 21, 4, 12, tzinfo=UTC)),
        ("2026-11-21T04:12:00.123456+00:00", datetime(2026, 11, 21, 4, 12, 0, 123456, tzinfo=UTC)),
        # a `+` left unencoded in a query string arrives as a space
        ("2026-11-21T04:12:00 00:00", datetime(2026, 11, 21, 4, 12, tzinfo=UTC)),
        ("2026-11-21t04:12:00z", datetime(2026, 11, 21, 4, 12, tzinfo=UTC)),
        # more than microseconds: cut to the microsecond (the columns' resolution)
        ("2026-11-21T04:12:00.1234569Z", datetime(2026, 11, 21, 4, 12, 0, 123456, tzinfo=UTC)),
        # RFC 3339's leap second: the last microsecond of that minute
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        # beyond what a UTC datetime holds: the first or last one
        ("0001-01-01T00:00:00+01:00", datetime.min.replace(tzinfo=UTC)),
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
    ],
)
def test_accepted(text: str, instant: datetime) -> None:
    assert parse_instant(text) == instant


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21",  # a date names no instant
        "2026-11-21T04:12:00",  # no offset: which zone?
        "2026-11-21 04:12:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "yesterday",
        "",
        "1700000000",
    ],
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601") as refused:
        parse_instant(text)
    assert str(refused.value) == INSTANT_FORMAT
