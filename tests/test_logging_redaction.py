"""Every record, whatever it carries, is one JSON line with no secret in it.

`mask_text` returns a string untouched when nothing in it could trigger a masking pattern: it is
checked against the three regex substitutions it stands for (kept here as the reference), and
`redact` against a plain recursive reference. The formatter is structlog's own ProcessorFormatter
(app/core/logging.py); every line it writes is checked to parse as one JSON object.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import app.core.logging as log_module
from app.core.context import request_id_var
from app.core.logging import REDACTED, JsonFormatter, is_secret_key, mask_text, redact

SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# The reference: redaction as three regex substitutions on every string -----------------------

OLD_SECRET_WORDS = "password|passwd|token|secret|secret_key|api[_-]?key|authorization|cookie|jwt"
OLD_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+"), r"\1\2" + REDACTED),
    (
        re.compile(
            r"(?i)\b([A-Za-z0-9_-]*(?:" + OLD_SECRET_WORDS + r"))"
            r"([\"']?\s*[=:]\s*[\"']?)(?!\[REDACTED\]|(?:bearer|basic)\s)([^\s\"'&,;}\]]+)"
        ),
        r"\1\2" + REDACTED,
    ),
)


def old_mask_text(text: str) -> str:
    for pattern, replacement in OLD_VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def old_redact(value: Any) -> Any:
    if isinstance(value, str):
        return old_mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if is_secret_key(key) else old_redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [old_redact(item) for item in value]
    return old_mask_text(str(value))


STAMP = re.compile(r'\{"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?Z"')


def untimed(line: str) -> str:
    """The line without its timestamp value (the time of formatting, never the same twice)."""
    match = STAMP.match(line)
    assert match, line
    return '{"timestamp": "T"' + line[match.end() :]


def render(record: logging.LogRecord) -> str:
    """The formatter's line for `record`: one line, one JSON object, the record untouched."""
    before = {key: id(value) for key, value in record.__dict__.items()}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert isinstance(json.loads(line), dict)
    assert {key: id(value) for key, value in record.__dict__.items()} == before, "mutated"
    return line


# What the generated text and records are made of ----------------------------------------------

# Case-insensitive regexes also fold these onto ASCII letters: I with a dot above and the dotless
# i onto i, the long s onto s, the Kelvin sign onto k.
FOLDS = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}
WORDS = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "secret_key",
    "api_key",
    "api-key",
    "apikey",
    "authorization",
    "cookie",
    "jwt",
    "bearer",
    "basic",
    "eyJ",
    "REDACTED",
    "[REDACTED]",
)
SEPARATORS = (
    "=",
    ":",
    " = ",
    ": ",
    '"',
    "'",
    '":"',
    "&",
    ",",
    ";",
    "}",
    "]",
    " ",
    "\t",
    "\n",
    "\xa0",
)


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    """`word` in a random case, some letters swapped for the non-ASCII ones folding onto them."""
    letters = []
    for letter in word:
        choice = draw(st.integers(0, 3))
        if choice == 0 and letter.lower() in FOLDS:
            letters.append(draw(st.sampled_from(FOLDS[letter.lower()])))
        elif choice == 1:
            letters.append(letter.swapcase())
        else:
            letters.append(letter)
    return "".join(letters)


JWT_LIKE = st.builds(
    lambda head, parts: "eyJ" + head + "".join("." + part for part in parts),
    st.from_regex(r"[A-Za-z0-9_-]{0,12}", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9_-]{0,10}", fullmatch=True), max_size=3),
)
FRAGMENTS = st.one_of(
    st.sampled_from(WORDS).flatmap(spelled),
    st.sampled_from(SEPARATORS),
    JWT_LIKE,
    st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True),
    st.text(max_size=6),
)
SECRETISH = st.lists(FRAGMENTS, max_size=10).map("".join)
TEXT = st.one_of(st.text(max_size=20), SECRETISH, JWT_LIKE)


class Shown:
    """An object logged as the text it renders as."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


RECORD_KEYS = frozenset(logging.LogRecord("n", 0, "p", 0, "m", (), None).__dict__)
RESERVED = RECORD_KEYS | {"message", "asctime", "_name"}
KEY_POOL = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "user_id",
    "ctx",
    "event",
    "level",
    "logger",
    "timestamp",
    "taskName",
    "color_message",
    "task_id",
    "_record",
    "_from_structlog",
    "_logger",
    "password",
    "Current-Password",
    "X-Api-Key",
    "refresh_token",
    "client_secret",
    "jwt",
    "Authorization",
    "cookie",
    "passwordless",
)
KEYS = st.one_of(
    st.sampled_from(KEY_POOL), st.text(min_size=1, max_size=12), SECRETISH.filter(bool)
).filter(lambda key: key not in RESERVED)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.builds(Shown, TEXT),
    st.binary(max_size=6),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(KEYS, st.integers(), st.none()), inner, max_size=4),
        st.frozensets(st.one_of(st.integers(), TEXT), max_size=3),
    ),
    max_leaves=12,
)
ABSENT = object()
LEVELS = st.sampled_from(
    [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, 5]
)
LOGGER_NAMES = st.one_of(st.sampled_from(["app.access", "gunicorn.error", "celery"]), TEXT)
ARG = st.one_of(TEXT, st.integers(), st.builds(Shown, TEXT), st.dictionaries(KEYS, SCALARS))
MESSAGES = st.one_of(
    st.tuples(TEXT, st.just(())),
    st.tuples(st.just("request"), st.just(())),
    st.tuples(st.just("login %s from %s"), st.tuples(ARG, ARG)),
    st.tuples(st.just("url /api/posts?token=%s&page=%d"), st.tuples(TEXT, st.integers())),
    st.tuples(st.just("settings %s"), st.tuples(st.dictionaries(KEYS, VALUES, max_size=3))),
    st.tuples(
        st.just("%(who)s said %(what)s"),
        st.tuples(st.fixed_dictionaries({"who": TEXT, "what": ARG})),
    ),
)


def make_record(
    name: str, level: int, msg: str, args: tuple[Any, ...], extra: dict[str, Any] | None
) -> logging.LogRecord:
    return logging.getLogger(name or "tests").makeRecord(
        name, level, __file__, 1, msg, args, None, extra=extra
    )


@contextmanager
def request_id(value: str | None) -> Iterator[None]:
    token = request_id_var.set(value)
    try:
        yield
    finally:
        request_id_var.reset(token)


# The formatter: any record, one JSON line -----------------------------------------------------


@SETTINGS
@given(
    name=LOGGER_NAMES,
    level=LEVELS,
    message=MESSAGES,
    extra=st.dictionaries(KEYS, VALUES, max_size=6),
    extra_request_id=st.one_of(st.sampled_from([ABSENT, "", None, 0]), TEXT),
    context_request_id=st.one_of(st.none(), st.just(""), TEXT),
    preformatted=st.booleans(),
)
def test_any_record_is_one_json_line(
    name: str,
    level: int,
    message: tuple[str, tuple[Any, ...]],
    extra: dict[str, Any],
    extra_request_id: Any,
    context_request_id: str | None,
    preformatted: bool,
) -> None:
    if extra_request_id is not ABSENT:
        extra["request_id"] = extra_request_id
    msg, args = message
    record = make_record(name, level, msg, args, extra)
    if preformatted:  # another handler's formatter ran first: `message` and `asctime` are set
        logging.Formatter("%(asctime)s %(message)s").format(record)
    with request_id(context_request_id):
        render(record)


@pytest.mark.parametrize("key", [*KEY_POOL, "request_id"])
@pytest.mark.parametrize("value", ["x", "", None, {"token": "t", "a": [1, "Bearer b"]}])
def test_extras_named_like_the_formatter_s_own_keys(key: str, value: Any) -> None:
    record = make_record("tests.fast", logging.WARNING, "named %s", (key,), {key: value})
    render(record)
    with request_id("req-context"):
        render(record)


def test_the_access_line_has_its_fields_in_order() -> None:
    extra = {
        "request_id": "req-1",
        "method": "GET",
        "path": "/api/users/5f0c6f7e-8d1c-4a51-9a53-6b1c1e0b7f10",
        "route": "/api/users/<uuid:user_id>",
        "status": 200,
        "duration_ms": 1.23,
        "user_id": None,
    }
    record = make_record("app.access", logging.INFO, "request", (), extra)
    line = render(record)
    assert untimed(line) == (
        '{"timestamp": "T", "level": "info", "logger": "app.access", "event": "request", '
        '"request_id": "req-1", "method": "GET", '
        '"path": "/api/users/5f0c6f7e-8d1c-4a51-9a53-6b1c1e0b7f10", '
        '"route": "/api/users/<uuid:user_id>", "status": 200, "duration_ms": 1.23, '
        '"user_id": null}'
    )


def test_structlog_contextvars_are_merged() -> None:
    record = make_record("tests.fast", logging.INFO, "bound", (), {"user_id": "from-extra", "n": 1})
    with structlog.contextvars.bound_contextvars(
        user_id="from-context", tenant="t1", api_token="tok-123", request_id="req-bound"
    ):
        line = render(record)
    assert '"user_id": "from-extra"' in line
    assert '"tenant": "t1"' in line
    assert f'"api_token": "{REDACTED}"' in line
    assert '"request_id": "req-bound"' in line


def test_a_running_celery_task_names_itself() -> None:
    from celery import Celery
    from celery._state import _task_stack

    celery = Celery("tests-fast", set_as_current=False)

    @celery.task(name="tests.fast.noop")
    def noop() -> None:
        return None

    record = make_record("celery.task", logging.INFO, "working", (), {"n": 1})
    noop.push_request(id="task-123")
    _task_stack.push(noop)
    try:
        line = render(record)
    finally:
        _task_stack.pop()
        noop.pop_request()
    assert '"task_name": "tests.fast.noop", "task_id": "task-123"' in line


# Exceptions, stacks and structlog's own loggers --------------------------------------------


def test_records_with_an_exception_or_a_stack_are_redacted() -> None:
    signed = jwt.encode({"sub": "someone"}, "a key long enough for HS256 to accept it", "HS256")
    try:
        raise ValueError(f"bad secret=hunter2 in {signed}")
    except ValueError:
        exc_info = sys.exc_info()
    failed = logging.getLogger("tests.fast").makeRecord(
        "tests.fast", logging.ERROR, __file__, 1, "failed %s", ("token=abc",), exc_info
    )
    stacked = make_record("tests.fast", logging.INFO, "where", (), {"password": "pw-1"})
    stacked.stack_info = "Stack (most recent call last):\n  password=pw-2"
    plain = make_record("tests.fast", logging.INFO, "plain", (), None)

    failure = render(failed)
    stack = render(stacked)
    render(plain)

    assert "ValueError" in failure
    assert "hunter2" not in failure
    assert signed not in failure
    assert f"token={REDACTED}" in failure
    assert "pw-1" not in stack


def test_structlog_loggers_records_are_redacted() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    stdlib_logger = logging.getLogger("tests.fast.structlog")
    saved = (stdlib_logger.handlers[:], stdlib_logger.level, stdlib_logger.propagate)
    stdlib_logger.handlers[:] = [Keep()]
    stdlib_logger.setLevel(logging.INFO)
    stdlib_logger.propagate = False
    log_module._configure_structlog()
    try:
        structlog.get_logger("tests.fast.structlog").info(
            "native", password="pw-native", token="tok-native", note="Bearer abc", n=1
        )
    finally:
        stdlib_logger.handlers[:], level, stdlib_logger.propagate = saved
        stdlib_logger.setLevel(level)
        structlog.reset_defaults()

    (record,) = records
    line = render(record)
    assert "pw-native" not in line
    assert "tok-native" not in line
    assert f'"note": "Bearer {REDACTED}"' in line
    assert '"n": 1' in line


# Redaction: the cheap check never skips a masking ---------------------------------------------


@settings(SETTINGS, max_examples=2000)
@given(text=st.one_of(SECRETISH, st.text(), TEXT))
@example(text="Bearer abc")
@example(text="ba\u017fic abc")  # the long s folds onto s
@example(text="To\u212aen=abc")  # the Kelvin sign folds onto k
@example(text="\u0130d_token: 'x'")
@example(text="author\u0131zation:x")
@example(text='{"api-key":"x"}')
@example(text="x_password = y")
@example(text="eyJhbGciOi.eyJzdWIi.sig")
@example(text="EYJ not a jwt")
@example(text="bearer\u2003x")
@example(text="token=[REDACTED]")
def test_mask_text_masks_what_the_three_regexes_mask(text: str) -> None:
    masked = mask_text(text)
    assert masked == old_mask_text(text)
    assert type(masked) is str


def test_mask_text_returns_a_plain_str_for_a_str_subclass() -> None:
    class Name(str):
        pass

    for text in ("plain", "token=abc"):
        assert type(mask_text(Name(text))) is str
        assert mask_text(Name(text)) == old_mask_text(Name(text))


@SETTINGS
@given(value=VALUES)
def test_redact_returns_what_it_returned(value: Any) -> None:
    assert repr(redact(value)) == repr(old_redact(value))
