"""The JSON log formatter on its own (contract §7): secret keys and secret-looking values are
masked in keys, nested values, messages, exceptions and structlog's loggers, and a line carries
the request id of the request or task being served.

Redaction happens when a line is formatted, so these read the production handler's real output
(`json_logs`). The API and real processes are in tests/api/test_logging.py and
tests/system/test_logging.py.
"""

from __future__ import annotations

import logging

import jwt
import structlog

from app.core.context import request_id_var
from app.core.logging import REDACTED
from tests.factories import WRONG_KEY
from tests.support.logs import assert_absent, parse_lines, secret, token_parts


def test_secret_keys_and_secret_looking_values_are_masked(json_logs) -> None:
    signed = jwt.encode({"sub": "someone"}, WRONG_KEY, algorithm="HS256")
    secrets = {
        "password": secret("pw"),
        "current_password": secret("cur"),
        "new_password": secret("new"),
        "api_key": secret("key"),
        "cookie": secret("cookie"),
        "refresh_token": secret("rt"),
        "client_secret": secret("cs"),
        "jwt": secret("jwt"),
        "opaque_bearer": secret("opaque"),
        "query_token": secret("qt"),
        "query_password": secret("qp"),
        "repr_password": secret("rp"),
        "repr_token": secret("rtk"),
        "exception_secret": secret("ex"),
        "structlog_password": secret("sp"),
        "structlog_token": secret("st"),
        **token_parts(signed),
    }
    log = logging.getLogger("tests.logging")
    log.info(
        "login attempt",
        extra={
            "password": secrets["password"],
            "Current-Password": secrets["current_password"],
            "NEW_PASSWORD": secrets["new_password"],
            "headers": {
                "Authorization": f"Bearer {signed}",
                "X-Api-Key": secrets["api_key"],
                "Cookie": f"session={secrets['cookie']}",
            },
            "items": [{"refresh_token": secrets["refresh_token"]}, {"note": f"got {signed}"}],
            "client_secret": secrets["client_secret"],
            "jwt": secrets["jwt"],
            "safe": "visible",
        },
    )
    log.warning(
        "header Authorization: Bearer %s, url /api/posts?token=%s&password=%s&page=2",
        secrets["opaque_bearer"],
        secrets["query_token"],
        secrets["query_password"],
    )
    log.info("settings %s", {"password": secrets["repr_password"], "token": secrets["repr_token"]})
    try:
        raise ValueError(f"bad secret={secrets['exception_secret']} in {signed}")
    except ValueError:
        log.exception("failed")
    structlog.get_logger("tests.structlog").info(
        "native", password=secrets["structlog_password"], token=secrets["structlog_token"], n=1
    )

    out = json_logs()
    assert_absent(out, secrets)
    extra, warning, settings, failure, native = parse_lines(out)
    assert extra["event"] == "login attempt"
    assert extra["password"] == extra["Current-Password"] == extra["NEW_PASSWORD"] == REDACTED
    assert extra["headers"] == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
        "Cookie": REDACTED,
    }
    assert extra["items"] == [{"refresh_token": REDACTED}, {"note": f"got {REDACTED}"}]
    assert extra["client_secret"] == extra["jwt"] == REDACTED
    assert extra["safe"] == "visible"  # only secrets go
    assert warning["level"] == "warning"
    assert f"Bearer {REDACTED}" in warning["event"]
    assert f"token={REDACTED}&password={REDACTED}&page=2" in warning["event"]
    assert REDACTED in settings["event"]
    assert failure["level"] == "error"
    assert "ValueError" in failure["exception"]
    assert native["logger"] == "tests.structlog"
    assert native["password"] == native["token"] == REDACTED
    assert native["n"] == 1


def test_lines_carry_the_request_id_of_the_request_or_task_being_served(json_logs) -> None:
    log = logging.getLogger("tests.logging")
    token = request_id_var.set("req-in-context")
    try:
        log.info("inside")
    finally:
        request_id_var.reset(token)
    log.info("outside")
    inside, outside = parse_lines(json_logs())
    assert inside["request_id"] == "req-in-context"
    assert "request_id" not in outside
