"""Property tests (hypothesis): cursors, cursor walks, PATCH against PUT, and the error envelope.

The database is reset per test, not per example, so every example makes its own users and posts
(with `unique()` names) and looks only at lists it owns. Settings are fixed and bounded: the
examples are derandomised (the same on every run) and there is no example database. `@example`s
pin inputs that once broke the service, so they are tried on every run whatever is generated.
Assertion messages say what was sent: a falsifying example's arguments are not always printed.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import app.posts.service as post_service
from app.core.errors import ValidationFailed
from app.core.pagination import CursorCodec
from app.core.text import forbidden_format_char
from tests.factories import PASSWORD, login, register, unique

SETTINGS = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Contract §2: the code that goes with each error status.
ERROR_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "UNPROCESSABLE",
    429: "RATE_LIMITED",
}

# Any code point, lone surrogates included (they reach the server as JSON `\ud800` escapes).
ANY_CHAR = st.characters(exclude_categories=())
ANY_TEXT = st.text(ANY_CHAR, max_size=40)
LATIN1 = st.characters(max_codepoint=0xFF)


# 1. Cursor codec -------------------------------------------------------------------------------

SCOPES = st.text(max_size=60)
SECRETS = st.text(max_size=60)
TIMES = st.datetimes(timezones=st.just(UTC))
ROW_IDS = st.integers(min_value=1, max_value=2**63 - 1)
BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def assert_rejected(codec: CursorCodec, scope: str, token: str) -> None:
    """The codec refuses `token` with ValidationFailed, never with any other exception."""
    with pytest.raises(ValidationFailed) as caught:
        codec.decode(scope, token)
    assert caught.value.status == 400
    assert [d["field"] for d in caught.value.details] == ["cursor"]


@SETTINGS
@given(secret=SECRETS, scope=SCOPES, when=TIMES, row_id=ROW_IDS)
def test_cursor_round_trips(secret: str, scope: str, when: datetime, row_id: int) -> None:
    codec = CursorCodec(secret)
    token = codec.encode(scope, when, row_id)
    decoded = codec.decode(scope, token)
    assert decoded == (when, row_id)
    assert decoded[0].utcoffset() == timedelta(0)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token), "a cursor must be URL-safe as it is"
    # A fresh codec on the same secret (another process) reads it too.
    assert CursorCodec(secret).decode(scope, token) == (when, row_id)


@SETTINGS
@given(
    secret=SECRETS,
    scope=SCOPES,
    when=TIMES,
    row_id=ROW_IDS,
    other_scope=SCOPES,
    other_secret=SECRETS,
)
def test_cursor_is_bound_to_its_scope_and_secret(
    secret: str, scope: str, when: datetime, row_id: int, other_scope: str, other_secret: str
) -> None:
    token = CursorCodec(secret).encode(scope, when, row_id)
    if other_scope != scope:
        assert_rejected(CursorCodec(secret), other_scope, token)
    if other_secret != secret:
        assert_rejected(CursorCodec(other_secret), scope, token)


# Mostly characters a cursor could hold, their standard-base64 look-alikes, padding, and
# characters a lenient base64 decoder would skip.
TOKEN_CHARS = st.sampled_from(string.ascii_letters + string.digits + "-_+/=.! \n%") | ANY_CHAR
# How to tamper with a token: positions are taken modulo its length.
TAMPERS = (
    st.tuples(st.sampled_from(["replace", "delete", "insert"]), st.integers(0, 500), TOKEN_CHARS)
    | st.tuples(st.just("truncate"), st.integers(0, 500), st.just(""))
    | st.tuples(st.just("extend"), st.just(0), st.text(TOKEN_CHARS, min_size=1, max_size=8))
)


def tamper(token: str, how: tuple[str, int, str]) -> str:
    """`token` with one character replaced, deleted or inserted, or truncated, or extended."""
    kind, index, chars = how
    index %= len(token)
    if kind == "truncate":
        return token[:index]
    if kind == "extend":
        return token + chars
    if kind == "delete":
        return token[:index] + token[index + 1 :]
    if kind == "insert":
        return token[:index] + chars + token[index:]
    if chars == token[index]:
        chars = "A" if token[index] != "A" else "B"
    return token[:index] + chars + token[index + 1 :]


@settings(SETTINGS, max_examples=200)  # pure and fast: many examples cost little
@given(secret=SECRETS, scope=SCOPES, when=TIMES, row_id=ROW_IDS, how=TAMPERS)
# What a lenient base64 decoder reads as the same token.
@example(secret="s", scope="posts", when=BASE_TIME, row_id=1, how=("insert", 0, ":"))
@example(secret="s", scope="posts", when=BASE_TIME, row_id=1, how=("insert", 9, " "))
@example(secret="s", scope="posts", when=BASE_TIME, row_id=1, how=("extend", 0, "="))
@example(secret="s", scope="posts", when=BASE_TIME, row_id=1, how=("extend", 0, "\n"))
@example(secret="s", scope="posts", when=BASE_TIME, row_id=1, how=("extend", 0, "é"))
def test_a_tampered_cursor_is_a_validation_error(
    secret: str, scope: str, when: datetime, row_id: int, how: tuple[str, int, str]
) -> None:
    codec = CursorCodec(secret)
    token = codec.encode(scope, when, row_id)
    bad = tamper(token, how)
    assert bad != token
    assert_rejected(codec, scope, bad)


# 2. Cursor walks -------------------------------------------------------------------------------

BASE = BASE_TIME
# A small set of creation times, so that many posts tie; later insertions may also be newer.
TIED = 4
STAMPS = [BASE + timedelta(seconds=n) for n in range(TIED)] + [
    BASE + timedelta(minutes=5, microseconds=n) for n in range(4)
]


class Clock:
    """Stands in for app.posts.service.utcnow: returns whatever it was last set to."""

    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> datetime:
        return self.now


@contextmanager
def frozen_post_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    clock = Clock()
    with monkeypatch.context() as patch:
        patch.setattr(post_service, "utcnow", clock)
        yield clock


def walk(
    client: Any,
    path: str,
    per_page: int,
    headers: dict[str, str],
    between_pages: Callable[[int], None] = lambda _page: None,
) -> list[dict[str, Any]]:
    """Every item of a list from the first page on, following `meta.next_cursor`."""
    items: list[dict[str, Any]] = []
    response = client.get(path, query_string={"per_page": per_page}, headers=headers)
    for page in range(1000):
        assert response.status_code == 200, response.get_data(as_text=True)
        data, meta = response.json["data"], response.json["meta"]
        assert meta["per_page"] == per_page
        assert len(data) <= per_page
        assert data or page == 0, "an empty page after a cursor"
        items.extend(data)
        cursor = meta["next_cursor"]
        if cursor is None:
            assert "Link" not in response.headers
            return items
        assert len(data) == per_page, "only the last page may be short"
        assert "Link" in response.headers
        between_pages(page)
        response = client.get(
            path, query_string={"cursor": cursor, "per_page": per_page}, headers=headers
        )
    raise AssertionError("the cursor walk did not end")


POSTS_TO_WALK = st.lists(
    st.tuples(st.integers(0, TIED - 1), st.sampled_from(["draft", "published"])), max_size=25
)
# (after which page, creation time index, status) of posts created during the walk.
INSERTIONS = st.lists(
    st.tuples(
        st.integers(0, 8), st.integers(0, len(STAMPS) - 1), st.sampled_from(["draft", "published"])
    ),
    max_size=6,
)


@settings(SETTINGS, max_examples=30)
@given(posts=POSTS_TO_WALK, per_page=st.integers(1, 7), insertions=INSERTIONS)
def test_cursor_walk_visits_every_post_once_in_order(
    client: Any,
    make_account: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    posts: list[tuple[int, str]],
    per_page: int,
    insertions: list[tuple[int, int, str]],
) -> None:
    author = make_account()
    path = f"/api/users/{author.id}/posts"
    order: dict[str, tuple[datetime, int]] = {}  # post id -> (created_at, creation order)
    status: dict[str, str] = {}

    def create(stamp: datetime, post_status: str) -> str:
        clock.now = stamp
        post = author.post_as(f"Post {len(order)}", status=post_status)
        assert datetime.fromisoformat(post["created_at"]) == stamp
        order[post["id"]] = (stamp, len(order))
        status[post["id"]] = post_status
        return post["id"]

    def newest_first(ids: Any) -> list[str]:
        return sorted(ids, key=order.__getitem__, reverse=True)

    with frozen_post_clock(monkeypatch) as clock:
        originals = [create(STAMPS[n], s) for n, s in posts]
        expected = newest_first(originals)

        def insert(page: int) -> None:
            for after, n, post_status in insertions:
                if after == page:
                    create(STAMPS[n], post_status)

        # The author sees drafts too; posts are created between the page fetches.
        items = walk(client, path, per_page, author.headers, insert)

    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)), "a post was visited twice"
    assert set(ids) <= set(order)
    assert [i for i in ids if i in set(originals)] == expected, "a post was skipped or reordered"
    assert ids == newest_first(ids), "not in (created_at, id) descending order"
    assert all(item["author_id"] == author.id for item in items)
    # Anyone else: every published post, and nothing else, in the same order.
    public = walk(client, path, per_page, {})
    assert [item["id"] for item in public] == [
        i for i in newest_first(order) if status[i] == "published"
    ]


# 3. PATCH is PUT with the unchanged fields filled in ------------------------------------------


def _valid_text(
    max_size: int, *, min_size: int = 0, multiline: bool = False, strip: bool = True
) -> st.SearchStrategy[str]:
    """Text the API stores as sent: printable, NFC, (when the field strips) trimmed, and free of
    spoofing characters (app/core/text.py: no format characters or line separators on one line,
    no bidi embeddings/overrides/isolates in multi-line text)."""
    chars = st.characters(
        exclude_categories=("Cs", "Cc") if multiline else ("Cs", "Cc", "Cf", "Zl", "Zp"),
        include_characters="\t\n\r" if multiline else "",
    )

    def clean(text: str) -> str:
        text = unicodedata.normalize("NFC", text)
        return text.strip() if strip else text

    def ok(text: str) -> bool:
        return (
            min_size <= len(text) <= max_size
            and unicodedata.normalize("NFC", text) == text
            and (not strip or text == text.strip())
            and forbidden_format_char(text, multiline=multiline) is None
        )

    short = st.text(chars, max_size=min(max_size, 40))
    at_limit = st.text(chars, min_size=max_size, max_size=max_size)
    return (short | at_limit).map(clean).filter(ok)


DISPLAY_NAMES = _valid_text(100)
BIOS = _valid_text(2000, multiline=True)
TITLES = _valid_text(200, min_size=1)
BODIES = _valid_text(300, multiline=True, strip=False)
STATUSES = st.sampled_from(["draft", "published"])
USERNAME_TAILS = st.text(string.ascii_letters + string.digits + "_.-", max_size=20)


def strip_volatile(view: dict[str, Any]) -> dict[str, Any]:
    """A representation without its id, slug and timestamps (published_at only as set or not)."""
    out = {k: v for k, v in view.items() if k not in {"id", "slug", "created_at", "updated_at"}}
    if "published_at" in out:
        out["published_at"] = out["published_at"] is not None
    return out


@st.composite
def user_changes(draw: st.DrawFn) -> dict[str, Any]:
    """A subset of the mutable profile fields with valid values. Username and email are drawn as
    (how, tail) markers: the test makes them unique per example."""
    changes: dict[str, Any] = {}
    if draw(st.booleans()):
        # "new" is a fresh unique name; "same"/"swapcase" are the current one, as is or recased.
        changes["username"] = (
            draw(st.sampled_from(["new", "same", "swapcase"])),
            draw(USERNAME_TAILS),
        )
    if draw(st.booleans()):
        changes["email"] = (draw(st.sampled_from(["new", "same", "upper"])), None)
    if draw(st.booleans()):
        changes["display_name"] = draw(DISPLAY_NAMES)
    if draw(st.booleans()):
        changes["bio"] = draw(BIOS)
    return changes


def put_body(view: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {field: view[field] for field in fields}


@settings(SETTINGS, max_examples=25)
@given(
    display_name=DISPLAY_NAMES,
    bio=BIOS,
    username_tail=USERNAME_TAILS,
    drawn=user_changes(),
)
def test_user_patch_equals_put_of_the_merged_profile(
    client: Any,
    display_name: str,
    bio: str,
    username_tail: str,
    drawn: dict[str, Any],
) -> None:
    username = unique("n") + username_tail
    email = f"{unique('e')}@example.com"
    changes: dict[str, Any] = {}
    for field, value in drawn.items():
        if field == "username":
            how, tail = value
            changes[field] = {
                "new": unique("m") + tail,
                "same": username,
                "swapcase": username.swapcase(),
            }[how]
        elif field == "email":
            how, _ = value
            changes[field] = {
                "new": f"{unique('f')}@Example.ORG",
                "same": email,
                "upper": email.upper(),
            }[how]
        else:
            changes[field] = value

    def twin() -> tuple[dict[str, Any], dict[str, str]]:
        user = register(client, username=username, email=email, display_name=display_name, bio=bio)
        token = login(client, email)["access_token"]
        return user, {"Authorization": f"Bearer {token}"}

    # PATCH the first twin; then delete it, which frees its email and username for the second.
    first, first_auth = twin()
    patched = client.patch(f"/api/users/{first['id']}", json=changes, headers=first_auth)
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert client.get(f"/api/users/{first['id']}", headers=first_auth).json == patched.json
    deleted = client.delete(f"/api/users/{first['id']}", headers=first_auth)
    assert deleted.status_code == 204, deleted.get_data(as_text=True)

    second, second_auth = twin()
    assert strip_volatile(second) == strip_volatile(first)
    merged = {**put_body(second, ("email", "username", "display_name", "bio")), **changes}
    put = client.put(f"/api/users/{second['id']}", json=merged, headers=second_auth)
    assert put.status_code == 200, put.get_data(as_text=True)
    assert client.get(f"/api/users/{second['id']}", headers=second_auth).json == put.json

    assert strip_volatile(patched.json["data"]) == strip_volatile(put.json["data"])
    expected = {**merged, "email": merged["email"].lower()}
    assert put_body(put.json["data"], tuple(expected)) == expected
    changed = any(expected[k] != second[k] for k in expected)
    assert put.json["data"]["version"] == (2 if changed else 1)
    assert patched.headers["ETag"] == put.headers["ETag"]


@st.composite
def post_changes(draw: st.DrawFn) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if draw(st.booleans()):
        changes["title"] = draw(TITLES)
    if draw(st.booleans()):
        changes["body"] = draw(BODIES)
    if draw(st.booleans()):
        changes["status"] = draw(STATUSES)
    return changes


@settings(SETTINGS, max_examples=30)
@given(title=TITLES, body=BODIES, status=STATUSES, changes=post_changes())
def test_post_patch_equals_put_of_the_merged_post(
    client: Any,
    make_account: Callable[..., Any],
    title: str,
    body: str,
    status: str,
    changes: dict[str, Any],
) -> None:
    author = make_account()
    first = author.post_as(title, body=body, status=status)
    second = author.post_as(title, body=body, status=status)
    assert strip_volatile(first) == strip_volatile(second)

    patched = client.patch(f"/api/posts/{first['id']}", json=changes, headers=author.headers)
    assert patched.status_code == 200, patched.get_data(as_text=True)
    merged = {**put_body(second, ("title", "body", "status")), **changes}
    put = client.put(f"/api/posts/{second['id']}", json=merged, headers=author.headers)
    assert put.status_code == 200, put.get_data(as_text=True)

    for before, response in ((first, patched), (second, put)):
        got = client.get(f"/api/posts/{before['id']}", headers=author.headers)
        assert got.json == response.json
    assert strip_volatile(patched.json["data"]) == strip_volatile(put.json["data"])
    assert put_body(put.json["data"], tuple(merged)) == merged
    changed = any(merged[k] != second[k] for k in merged)
    assert put.json["data"]["version"] == (2 if changed else 1)

    def published_at_kept(before: dict[str, Any], after: dict[str, Any]) -> bool | None:
        if after["published_at"] is None:
            return None
        return after["published_at"] == before["published_at"]

    assert published_at_kept(first, patched.json["data"]) == published_at_kept(
        second, put.json["data"]
    )


# 4. The error envelope under junk --------------------------------------------------------------

METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])
ROUTES = [
    "/api/users",
    "/api/users/{user}",
    "/api/posts",
    "/api/posts/{post}",
    "/api/users/{user}/posts",
    "/api/auth/login",
    "/api/me",
]
FIELDS = [
    "email",
    "username",
    "password",
    "current_password",
    "display_name",
    "bio",
    "title",
    "body",
    "status",
    "id",
    "version",
    "is_admin",
]
# Characters that NFC changes (some expand to two), white space, combining marks.
TRICKY = (
    "aZ09_.-@ \t\n\u00a0\u2003\u3000\u0301\u0958\u095f\u2adc\ufb1d\U0001d15e\u1e0a\u0307"
    "\u00c5\u212b\U0001f600\u200b\ufeff"
)
TRICKY_TEXT = st.sampled_from([1, 3, 8, 32, 100, 128, 200, 254, 1024, 2000]).flatmap(
    lambda n: st.text(st.sampled_from(TRICKY), min_size=max(n - 1, 0), max_size=n + 1)
)
# The usual suspects of text handling: lone surrogates, NUL and other controls, invisible and
# bidi characters, non-characters, NFC-expanding and combining characters.
SUSPECT_CHARS = st.sampled_from(
    "\ud800\udbff\udc00\udfff\x00\x1f\x7f\x85\x9f\u200b\u202e\u2028\ufeff\ufffe\uffff"
    "\U0010ffff\u0958\u0301"
)
SUSPECT_TEXT = st.text(st.sampled_from(string.ascii_letters + " ") | SUSPECT_CHARS, max_size=12)
# Emails that look right (a local part, labels, a TLD) with the odd suspect character in them.
EMAIL_LIKE = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    st.text(
        st.sampled_from(string.ascii_letters + string.digits + "._-") | SUSPECT_CHARS,
        min_size=1,
        max_size=12,
    )
    | TRICKY_TEXT,
    st.lists(
        st.text(
            st.sampled_from(string.ascii_lowercase + "-") | SUSPECT_CHARS, min_size=1, max_size=12
        ),
        min_size=1,
        max_size=3,
    ).map(lambda labels: [*labels, "com"]),
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | ANY_TEXT
    | TRICKY_TEXT
    | EMAIL_LIKE
    | SUSPECT_TEXT
    | st.sampled_from(["draft", "published", PASSWORD, ""])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=8,
)
# Junk aimed at one field of an otherwise valid body.
FIELD_JUNK = {
    "email": EMAIL_LIKE,
    "username": st.text(st.sampled_from(string.ascii_letters + "_.-") | ANY_CHAR, max_size=40),
    "password": TRICKY_TEXT | ANY_TEXT,
    "current_password": TRICKY_TEXT | ANY_TEXT,
    "status": st.sampled_from(["draft", "published", "Draft", " published", "deleted", ""]),
}
TEMPLATES = ["user", "post", "login", "profile", "password", "empty"]
JSON_BODIES = st.fixed_dictionaries(
    {
        "template": st.sampled_from(TEMPLATES),
        "drop": st.sets(st.sampled_from(FIELDS), max_size=2),
        "set": st.dictionaries(st.sampled_from(FIELDS) | ANY_TEXT, JSON_VALUES, max_size=3),
    }
)
# Valid JSON grammar with hostile values: deep nesting, integers beyond int()'s digit limit.
DEEP_JSON = (
    st.sampled_from([10, 100, 1_000, 10_000, 100_000])
    .flatmap(lambda m: st.integers(m, 4 * m))
    .flatmap(lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n]))
)
LONG_NUMBERS = (
    st.sampled_from([10, 1_000, 5_000, 100_000])
    .flatmap(lambda m: st.integers(m, 2 * m))
    .flatmap(
        lambda n: st.sampled_from([b"9" * n, b'{"title": ' + b"9" * n + b"}", b"0." + b"1" * n])
    )
)
RAW_BODIES = (
    st.binary(max_size=200)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | DEEP_JSON
    | LONG_NUMBERS
    | st.none()
)
CONTENT_TYPES = (
    st.sampled_from(
        [
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset=bogus",
            "application/merge-patch+json",
            "application/vnd.api+json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
        ]
    )
    | st.text(LATIN1, max_size=60)
    | st.none()
)
HEADER_TEXT = st.text(LATIN1, max_size=150)
VALID_REQUEST_IDS = st.from_regex(REQUEST_ID_RE, fullmatch=True)
# Near misses: a valid id with a little junk before or after it (a space, a NUL, a newline).
REQUEST_IDS = (
    VALID_REQUEST_IDS
    | st.builds(lambda a, b: a + b, st.text(LATIN1, min_size=1, max_size=2), VALID_REQUEST_IDS)
    | st.builds(
        lambda a, b: a + b,
        VALID_REQUEST_IDS,
        st.text(st.sampled_from(" \t\n\r\x00\x0b\x85\xa0") | LATIN1, min_size=1, max_size=2),
    )
    | HEADER_TEXT
    | st.none()
)
ETAGS = st.sampled_from(['"v1"', '"v2"', "*", 'W/"v1"', '"v1-private"', '"v1", "v2"', ""])
ETAG_HEADERS = (
    ETAGS
    | st.builds(lambda a, b: a + b, ETAGS, st.text(LATIN1, max_size=3))
    | st.builds(lambda a, b: a + b, st.text(LATIN1, max_size=3), ETAGS)
    | HEADER_TEXT
    | st.none()
)
AUTH_KINDS = st.sampled_from(
    ["none", "access", "refresh", "bearer-junk", "junk", "truncated", "lowercase", "extended"]
)


def _quote(text: str) -> str:
    """Percent-encoded UTF-8; a lone surrogate becomes the (invalid) bytes it would be."""
    return quote(text, safe="", errors="surrogatepass")


SEGMENTS = st.text(ANY_CHAR, max_size=20).map(_quote)
IDS = st.sampled_from(["user", "post", "random"]) | SEGMENTS
QUERIES = (
    st.lists(
        st.tuples(
            st.sampled_from(["page", "per_page", "cursor"]) | st.text(ANY_CHAR, max_size=10),
            st.integers(-5, 10**20).map(str) | st.text(ANY_CHAR, max_size=30),
        ),
        max_size=3,
    ).map(lambda pairs: "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs))
    | st.text(LATIN1, max_size=80)
    | st.none()
)


def body_for(template: str, account: Any) -> dict[str, Any]:
    name = unique()
    return {
        "user": {
            "email": f"{name}@example.com",
            "username": name,
            "password": PASSWORD,
            "display_name": "Someone",
            "bio": "Bio",
        },
        "post": {"title": "A title", "body": "A body", "status": "published"},
        "login": {"email": account.email, "password": PASSWORD},
        "profile": {
            "email": account.email,
            "username": account.user["username"],
            "display_name": "Name",
            "bio": "Bio",
        },
        "password": {"password": "a new password", "current_password": PASSWORD},
        "empty": {},
    }[template]


def authorization(kind: str, junk: str, account: Any) -> str | None:
    access, refresh = account.tokens["access_token"], account.tokens["refresh_token"]
    return {
        "none": None,
        "access": f"Bearer {access}",
        "refresh": f"Bearer {refresh}",
        "bearer-junk": f"Bearer {junk}",
        "junk": junk,
        "truncated": f"Bearer {access[: len(junk) % len(access)]}",
        "lowercase": f"bearer {access}",
        "extended": f"Bearer {access}{junk}",
    }[kind]


def check_junk_response(response: Any, sent_request_id: str | None, request: str) -> None:
    """The contract's rules for any response; `request` describes what was sent (for messages)."""
    status = response.status_code
    text = response.get_data(as_text=True)
    assert status < 500, (status, text, request)
    request_id = response.headers.get("X-Request-ID")
    assert request_id is not None
    assert REQUEST_ID_RE.fullmatch(request_id), request_id
    if sent_request_id is not None and REQUEST_ID_RE.fullmatch(sent_request_id):
        assert request_id == sent_request_id
    if 200 <= status < 300 or status == 304:
        return
    assert status in ERROR_CODES, (status, text)
    assert response.mimetype == "application/json", (status, response.mimetype, text)
    body = json.loads(text)
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == ERROR_CODES[status], (status, error)
    assert isinstance(error["message"], str)
    assert error["message"]
    if "details" in error:
        assert isinstance(error["details"], list)
        assert error["details"], "details only where there are any"
        for item in error["details"]:
            assert isinstance(item, dict)
            assert set(item) == {"field", "message"}, item
            assert isinstance(item["field"], str)
            assert isinstance(item["message"], str)
    assert "Traceback" not in text
    if status == 401:
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def describe(
    method: str, path: str, query: str | None, environ: dict[str, str], body: bytes | None
) -> str:
    """The request, for failure messages (long bodies shortened)."""
    shown = body if body is None or len(body) <= 300 else body[:150] + b"..." + body[-150:]
    return f"{method} {path} ?{query!r} {environ!r} body={shown!r}"


def environ_for(**headers: str | None) -> dict[str, str]:
    """Headers straight into the WSGI environ: the test client would refuse some values."""
    return {key: value for key, value in headers.items() if value is not None}


@settings(SETTINGS, max_examples=60)
@given(
    request_id=REQUEST_IDS.filter(lambda value: value is not None),
    method=METHODS,
    path=st.sampled_from(["/api/posts", "/api/me", "/api/users/x", "/api/nope"]),
)
@example(request_id="abc\n", method="GET", path="/api/posts")
@example(request_id="abc\r\n", method="GET", path="/api/posts")
@example(request_id=" abc", method="GET", path="/api/posts")
@example(request_id="abc\x00", method="GET", path="/api/posts")
@example(request_id="a" * 128, method="GET", path="/api/posts")
@example(request_id="a" * 129, method="GET", path="/api/posts")
@example(request_id="", method="GET", path="/api/posts")
def test_every_response_carries_a_valid_request_id(
    client: Any, request_id: str, method: str, path: str
) -> None:
    """The client's X-Request-ID when it is 1-128 of [A-Za-z0-9._-], a fresh valid one if not."""
    environ = {"HTTP_X_REQUEST_ID": request_id}
    response = client.open(path, method=method, environ_overrides=environ)
    check_junk_response(response, request_id, describe(method, path, None, environ, None))
    if not REQUEST_ID_RE.fullmatch(request_id):
        assert response.headers["X-Request-ID"] != request_id


@settings(SETTINGS, max_examples=100)
@given(
    method=METHODS,
    route=st.sampled_from(ROUTES) | st.lists(SEGMENTS, min_size=1, max_size=4),
    user_ref=IDS,
    post_ref=IDS,
    query=QUERIES,
    json_body=JSON_BODIES | st.none(),
    raw_body=RAW_BODIES,
    content_type=CONTENT_TYPES,
    request_id=REQUEST_IDS,
    if_match=ETAG_HEADERS,
    if_none_match=ETAG_HEADERS,
    auth_kind=AUTH_KINDS,
    auth_junk=HEADER_TEXT,
)
def test_junk_requests_get_the_error_envelope(
    client: Any,
    make_account: Callable[..., Any],
    method: str,
    route: str | list[str],
    user_ref: str,
    post_ref: str,
    query: str | None,
    json_body: dict[str, Any] | None,
    raw_body: bytes | None,
    content_type: str | None,
    request_id: str | None,
    if_match: str | None,
    if_none_match: str | None,
    auth_kind: str,
    auth_junk: str,
) -> None:
    account = make_account()
    post = account.post_as("Mine", status="published")
    refs = {"user": account.id, "post": post["id"], "random": str(uuid.uuid4())}
    if isinstance(route, list):  # an unknown path, most likely
        path = "/" + "/".join(route) if route[0] else "/api/" + "/".join(route[1:])
    else:
        path = route.format(user=refs.get(user_ref, user_ref), post=refs.get(post_ref, post_ref))

    if json_body is not None:
        payload = body_for(json_body["template"], account)
        for field in json_body["drop"]:
            payload.pop(field, None)
        payload.update(json_body["set"])
        data: bytes | None = json.dumps(payload).encode()
    else:
        data = raw_body

    environ = environ_for(
        HTTP_X_REQUEST_ID=request_id,
        HTTP_IF_MATCH=if_match,
        HTTP_IF_NONE_MATCH=if_none_match,
        HTTP_AUTHORIZATION=authorization(auth_kind, auth_junk, account),
        CONTENT_TYPE=content_type,
    )
    response = client.open(
        path, method=method, data=data, query_string=query, environ_overrides=environ
    )
    check_junk_response(response, request_id, describe(method, path, query, environ, data))


# The writes that read a body, each with the body it expects (which the junk then bends).
WRITES = [
    ("POST", "/api/users", "user"),
    ("PUT", "/api/users/{user}", "profile"),
    ("PATCH", "/api/users/{user}", "profile"),
    ("PATCH", "/api/users/{user}", "password"),
    ("POST", "/api/users/{user}/posts", "post"),
    ("PUT", "/api/posts/{post}", "post"),
    ("PATCH", "/api/posts/{post}", "post"),
    ("POST", "/api/auth/login", "login"),
]
TEMPLATE_FIELDS = {
    "user": ["email", "username", "password", "display_name", "bio"],
    "profile": ["email", "username", "display_name", "bio"],
    "password": ["password", "current_password"],
    "post": ["title", "body", "status"],
    "login": ["email", "password"],
}
JSON_CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"]
)
# How a field of a valid body is bent: one suspect character put into its valid value (at a
# position counted modulo the length), or the value replaced by junk.
MUTATIONS = st.tuples(
    st.just("insert"), st.integers(0, 64), SUSPECT_CHARS | st.sampled_from(TRICKY)
)


# Documented maximum lengths (OpenAPI maxLength) of the text fields.
MAX_LENGTHS = {
    "email": 254,
    "username": 32,
    "password": 128,
    "current_password": 128,
    "display_name": 100,
    "bio": 2000,
    "title": 200,
}


def _bent_field(field: str) -> st.SearchStrategy[tuple[str, Any]]:
    junk = FIELD_JUNK.get(field, TRICKY_TEXT | SUSPECT_TEXT)
    if field in MAX_LENGTHS:  # text of about the longest length allowed, as sent
        limit = MAX_LENGTHS[field]
        near_limit = st.text(st.sampled_from(TRICKY), min_size=limit - 2, max_size=limit + 1)
        junk = near_limit | junk
    return st.tuples(st.just(field), MUTATIONS | junk | JSON_VALUES)


BENDS = st.sampled_from(WRITES).flatmap(
    lambda write: st.tuples(
        st.just(write),
        st.lists(
            st.sampled_from(TEMPLATE_FIELDS[write[2]]).flatmap(_bent_field),
            min_size=1,
            max_size=2,
        ),
    )
)


def bend(value: Any, junk: Any) -> Any:
    if isinstance(junk, tuple):  # a mutation of the valid value
        _, position, char = junk
        text = str(value)
        position %= len(text) + 1
        return text[:position] + char + text[position:]
    return junk


EMAIL_SURROGATE = ("insert", 15, "\ud800")  # u0123456789@exa\ud800mple.com


@settings(SETTINGS, max_examples=300)
@given(
    bends=BENDS,
    drop=st.none() | st.sampled_from(FIELDS),
    extra=st.just({}) | st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=1),
    hostile=st.none() | DEEP_JSON | LONG_NUMBERS,
    content_type=JSON_CONTENT_TYPES,
    if_match=st.none() | ETAG_HEADERS,
)
@example(
    bends=(WRITES[0], [("email", EMAIL_SURROGATE)]),
    drop=None,
    extra={},
    hostile=None,
    content_type="application/json",
    if_match=None,
)
@example(
    bends=(WRITES[2], [("email", EMAIL_SURROGATE)]),
    drop=None,
    extra={},
    hostile=None,
    content_type="application/json",
    if_match=None,
)
@example(
    bends=(WRITES[4], [("title", "\u0958" * 200)]),  # NFC makes it 400 characters long
    drop=None,
    extra={},
    hostile=None,
    content_type="application/json",
    if_match=None,
)
def test_almost_valid_json_bodies_get_the_error_envelope(
    client: Any,
    make_account: Callable[..., Any],
    bends: tuple[tuple[str, str, str], list[tuple[str, Any]]],
    drop: str | None,
    extra: dict[str, Any],
    hostile: bytes | None,
    content_type: str,
    if_match: str | None,
) -> None:
    """Authenticated JSON writes whose body is valid but for a field or two, or hostile JSON."""
    account = make_account()
    post = account.post_as("Mine", status="published")
    (method, route, template), changes = bends
    path = route.format(user=account.id, post=post["id"])
    if hostile is None:
        payload = body_for(template, account)
        for field, junk in changes:
            payload[field] = bend(payload.get(field, ""), junk)
        payload.pop(drop or "", None)
        payload.update(extra)
        body = json.dumps(payload).encode()
    else:
        body = hostile
    environ = environ_for(
        HTTP_IF_MATCH=if_match,
        HTTP_AUTHORIZATION=account.headers["Authorization"],
        CONTENT_TYPE=content_type,
    )
    response = client.open(path, method=method, data=body, environ_overrides=environ)
    check_junk_response(response, None, describe(method, path, None, environ, body))
    if response.status_code in (200, 201):
        # Whatever was accepted must read back: stored as it was answered.
        location = response.headers.get("Location") or (path if method != "POST" else None)
        if location and "/auth/" not in location:
            again = client.get(location, headers=account.headers)
            assert again.status_code == 200, again.get_data(as_text=True)
            answered = response.json
            if route == "/api/users":  # someone else's account: no email for this reader
                answered["data"].pop("email")
            assert again.json == answered
            for field, limit in MAX_LENGTHS.items():
                stored = answered["data"].get(field, "")
                assert len(stored) <= limit, (field, len(stored), stored)
