"""Lists (contract §4): offset pages, keyset cursors, Link headers, and the N+1 guard."""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from app.core.pagination import CursorCodec
from app.extensions import db
from app.users.models import User
from tests.factories import register
from tests.support.assertions import assert_error
from tests.support.backends import reset_cache, reset_redis

LISTS = ("/api/posts", "/api/users", "/api/users/{author}/posts")


def parse_link(response: Any) -> str | None:
    """The target of `Link: <...>; rel="next"`, or None when there is no such link."""
    header = response.headers.get("Link")
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return target.strip().removeprefix("<").removesuffix(">")
    return None


def walk_cursor(client, path: str, per_page: int, headers=None) -> list[dict[str, Any]]:
    """Every item of a list, following meta.next_cursor from the first page."""
    items: list[dict[str, Any]] = []
    response = client.get(path, query_string={"per_page": per_page}, headers=headers or {})
    for _ in range(1000):
        assert response.status_code == 200, response.json
        items.extend(response.json["data"])
        cursor = response.json["meta"]["next_cursor"]
        if cursor is None:
            assert parse_link(response) is None
            return items
        assert len(response.json["data"]) == per_page
        response = client.get(
            path, query_string={"cursor": cursor, "per_page": per_page}, headers=headers or {}
        )
        meta = response.json["meta"] if response.status_code == 200 else {}
        assert "total" not in meta
        assert "page" not in meta
    raise AssertionError("the cursor walk did not end")


def newest_first(created: list[dict[str, Any]]) -> list[str]:
    """Ids ordered by (created_at, creation order) descending: creation order is id order."""
    keyed = [
        (datetime.fromisoformat(item["created_at"]), n, item["id"])
        for n, item in enumerate(created)
    ]
    return [item_id for *_, item_id in sorted(keyed, reverse=True)]


@pytest.fixture
def author(make_account):
    return make_account()


@pytest.fixture
def seed(client, author) -> Callable[[str, int], list[dict[str, Any]]]:
    """Create `n` items for a list; returns them in creation order."""

    def make(path: str, n: int) -> list[dict[str, Any]]:
        if path == "/api/users":
            # The author fixture already exists and is part of the users list.
            return [author.user] + [register(client) for _ in range(n - 1)]
        return [author.post_as(f"Post {i}", status="published") for i in range(n)]

    return make


def resolve(path: str, author) -> str:
    return path.format(author=author.id)


# Offset mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LISTS)
def test_offset_defaults_and_meta(client, seed, author, path):
    created = seed(path, 23)
    response = client.get(resolve(path, author))

    assert response.status_code == 200
    meta = response.json["meta"]
    assert meta["page"] == 1
    assert meta["per_page"] == 20
    assert meta["total"] == 23
    assert isinstance(meta["next_cursor"], str)
    assert meta["next_cursor"]
    assert [item["id"] for item in response.json["data"]] == newest_first(created)[:20]

    last = client.get(resolve(path, author), query_string={"page": 2})
    assert last.status_code == 200
    assert last.json["meta"] == {"per_page": 20, "next_cursor": None, "page": 2, "total": 23}
    assert [item["id"] for item in last.json["data"]] == newest_first(created)[20:]
    assert parse_link(last) is None


@pytest.mark.parametrize("path", LISTS)
def test_empty_list(client, request, path):
    if "{author}" in path:
        path = resolve(path, request.getfixturevalue("author"))
    response = client.get(path)
    assert response.status_code == 200
    assert response.json == {
        "data": [],
        "meta": {"per_page": 20, "next_cursor": None, "page": 1, "total": 0},
    }
    assert parse_link(response) is None


BAD_PARAMS = [
    ({"per_page": 0}, "per_page"),
    ({"per_page": 101}, "per_page"),
    ({"per_page": -1}, "per_page"),
    ({"per_page": "abc"}, "per_page"),
    ({"per_page": "1.5"}, "per_page"),
    ({"per_page": ""}, "per_page"),
    ({"per_page": "10000000000000000000000"}, "per_page"),
    ({"page": 0}, "page"),
    ({"page": -3}, "page"),
    ({"page": "x"}, "page"),
    ({"page": ""}, "page"),
    ({"page": "2.0"}, "page"),
    ({"page": "99999999999999999999999999"}, "page"),
]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(("params", "field"), BAD_PARAMS, ids=lambda v: repr(v))
def test_out_of_range_page_params_are_rejected(client, author, path, params, field):
    response = client.get(resolve(path, author), query_string=params)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in {item["field"] for item in error["details"]}, error


@pytest.mark.parametrize("path", LISTS)
def test_page_size_bounds_are_inclusive(client, seed, author, path):
    seed(path, 3)
    for per_page in (1, 100):
        response = client.get(resolve(path, author), query_string={"per_page": per_page})
        assert response.status_code == 200, response.json
        assert response.json["meta"]["per_page"] == per_page
        assert len(response.json["data"]) == min(per_page, 3)


@pytest.mark.parametrize("path", LISTS)
def test_page_beyond_the_end_is_empty(client, seed, author, path):
    seed(path, 3)
    for page in (2, 50, 1_000_000):
        response = client.get(resolve(path, author), query_string={"page": page, "per_page": 3})
        assert response.status_code == 200, response.json
        assert response.json["data"] == []
        assert response.json["meta"]["total"] == 3
        assert response.json["meta"]["next_cursor"] is None
        assert parse_link(response) is None


@pytest.mark.parametrize("path", LISTS)
def test_link_header_walks_every_offset_page(client, seed, author, path):
    created = seed(path, 12)
    url = f"{resolve(path, author)}?per_page=5&unrelated=kept"
    seen: list[str] = []
    pages = 0
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.json
        pages += 1
        seen.extend(item["id"] for item in response.json["data"])
        assert response.json["meta"]["page"] == pages
        link = parse_link(response)
        if response.json["meta"]["next_cursor"] is None:
            assert link is None
        else:
            assert link is not None
            query = parse_qs(urlsplit(link).query)
            assert query["page"] == [str(pages + 1)]
            assert query["per_page"] == ["5"]
        url = link
    assert pages == 3
    assert seen == newest_first(created)


# Cursor mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", LISTS)
def test_cursor_walk_visits_every_item_once_newest_first(client, seed, author, path):
    created = seed(path, 17)
    items = walk_cursor(client, resolve(path, author), per_page=4)
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)) == 17
    assert ids == newest_first(created)


@pytest.mark.parametrize("path", LISTS)
def test_cursor_meta_and_link(client, seed, author, path):
    seed(path, 5)
    first = client.get(resolve(path, author), query_string={"per_page": 2})
    cursor = first.json["meta"]["next_cursor"]

    second = client.get(resolve(path, author), query_string={"cursor": cursor, "per_page": 2})

    assert second.status_code == 200, second.json
    assert set(second.json["meta"]) == {"per_page", "next_cursor"}
    assert second.json["meta"]["per_page"] == 2
    link = parse_link(second)
    assert link is not None
    query = parse_qs(urlsplit(link).query)
    assert query["cursor"] == [second.json["meta"]["next_cursor"]]
    assert "page" not in query
    third = client.get(link)
    assert third.status_code == 200
    assert len(third.json["data"]) == 1
    assert third.json["meta"] == {"per_page": 2, "next_cursor": None}
    assert parse_link(third) is None


def test_cursor_keeps_its_position_when_new_items_arrive(client, author):
    created = [author.post_as(f"Post {i}", status="published") for i in range(6)]
    first = client.get("/api/posts", query_string={"per_page": 3})
    author.post_as("Newer", status="published")

    second = client.get(
        "/api/posts", query_string={"cursor": first.json["meta"]["next_cursor"], "per_page": 3}
    )

    assert [p["id"] for p in second.json["data"]] == newest_first(created)[3:]


def test_cursor_walk_with_tied_timestamps_on_posts(client, author, make_account, monkeypatch):
    import app.posts.service as post_service

    other = make_account()
    base = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    # Several posts share each timestamp, and creation order does not follow time order.
    stamps = [2, 0, 2, 1, 0, 2, 1, 1, 0, 2, 0, 1, 2, 0]
    created = []
    for n, offset in enumerate(stamps):
        when = base + timedelta(seconds=offset)
        monkeypatch.setattr(post_service, "utcnow", lambda when=when: when)
        writer = author if n % 2 else other
        created.append(writer.post_as(f"Tie {n}", status="published"))
    assert {p["created_at"] for p in created} == {
        (base + timedelta(seconds=s)).isoformat() for s in set(stamps)
    }
    expected = newest_first(created)

    for per_page in (1, 2, 3, 5, 14):
        items = walk_cursor(client, "/api/posts", per_page=per_page)
        assert [p["id"] for p in items] == expected, per_page
    offset_ids = [
        p["id"]
        for page in (1, 2, 3)
        for p in client.get("/api/posts", query_string={"page": page, "per_page": 5}).json["data"]
    ]
    assert offset_ids == expected
    mine = [p for p in created if p["author_id"] == author.id]
    items = walk_cursor(client, f"/api/users/{author.id}/posts", per_page=2)
    assert [p["id"] for p in items] == newest_first(mine)


def test_cursor_walk_with_tied_timestamps_on_users(client, author, app):
    users = [author.user] + [register(client) for _ in range(10)]
    base = datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC)
    stamps = [1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0]
    with app.app_context():
        for user, offset in zip(users, stamps, strict=True):
            db.session.execute(
                User.__table__.update()
                .where(User.__table__.c.public_id == uuid.UUID(user["id"]))
                .values(created_at=base + timedelta(seconds=offset))
            )
        db.session.commit()
        db.session.remove()
    tied = [
        {**u, "created_at": (base + timedelta(seconds=s)).isoformat()}
        for u, s in zip(users, stamps, strict=True)
    ]
    expected = newest_first(tied)

    for per_page in (1, 3, 4, 11):
        items = walk_cursor(client, "/api/users", per_page=per_page)
        assert [u["id"] for u in items] == expected, per_page
        assert {u["created_at"] for u in items} == {u["created_at"] for u in tied}


def test_offset_next_cursor_continues_in_cursor_mode(client, author):
    created = [author.post_as(f"Post {i}", status="published") for i in range(7)]
    first = client.get("/api/posts", query_string={"page": 1, "per_page": 3})
    cursor = first.json["meta"]["next_cursor"]

    second = client.get("/api/posts", query_string={"cursor": cursor, "per_page": 3})

    assert [p["id"] for p in second.json["data"]] == newest_first(created)[3:6]


def _flip(token: str, index: int) -> str:
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


TAMPERINGS: dict[str, Callable[[str], str]] = {
    "flip-first": lambda t: _flip(t, 0),
    "flip-middle": lambda t: _flip(t, len(t) // 2),
    "flip-near-end": lambda t: _flip(t, len(t) - 3),
    "truncated": lambda t: t[:-8],
    "half": lambda t: t[: len(t) // 2],
    "extended": lambda t: t + "AAAA",
    "random-base64": lambda t: base64.urlsafe_b64encode(os.urandom(len(t))).decode().rstrip("="),
    "random-std-base64": lambda _: base64.b64encode(os.urandom(90)).decode(),
    "not-base64": lambda _: "this is not a cursor!",
    "json": lambda _: base64.urlsafe_b64encode(b'["posts","2026-01-01T00:00:00+00:00",1]').decode(),
    "other-key": lambda _: CursorCodec("another secret").encode("posts", datetime.now(UTC), 1),
    "too-long": lambda t: t * 5,
    "empty": lambda _: "",
    "unicode": lambda _: "çürsör",
}


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("tamper", list(TAMPERINGS))
def test_tampered_cursor_is_rejected(client, seed, author, path, tamper):
    seed(path, 3)
    first = client.get(resolve(path, author), query_string={"per_page": 1})
    cursor = first.json["meta"]["next_cursor"]
    bad = TAMPERINGS[tamper](cursor)
    assert bad != cursor

    response = client.get(resolve(path, author), query_string={"cursor": bad, "per_page": 1})

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "cursor" in {item["field"] for item in error["details"]}


@pytest.mark.parametrize(
    "payload",
    [
        b'"just a string"',
        b"[]",
        b'["posts", "2026-01-01T00:00:00+00:00"]',
        b'["posts", "2026-01-01T00:00:00+00:00", "1"]',
        b'["posts", "yesterday", 1]',
        b'["posts", "2026-01-01T00:00:00", 1]',
        b'["posts", 5, 1]',
        b'["posts", "2026-01-01T00:00:00+00:00", 100000000000000000000000000000]',
        b'["posts", "2026-01-01T00:00:00+00:00", -100000000000000000000000000000]',
        b"not json",
        b"\xff\xfe",
    ],
    ids=lambda v: v.decode(errors="replace")[:30],
)
def test_well_signed_cursor_with_a_bad_payload_is_rejected(client, app, author, payload):
    """Defence in depth: even a payload signed with the server's key cannot cause a 500."""
    codec = CursorCodec(app.config["SECRET_KEY"])
    fernet: Fernet = codec._fernet
    token = fernet.encrypt(payload).decode().rstrip("=")
    author.post_as("One", status="published")

    response = client.get("/api/posts", query_string={"cursor": token})

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "cursor" in {item["field"] for item in error["details"]}


def test_cursor_from_another_list_is_rejected(client, author, make_account, admin):
    other = make_account()
    for account in (author, other):
        account.post_as("Published 1", status="published")
        account.post_as("Published 2", status="published")
        account.post_as("Draft", status="draft")

    def cursor(path: str, headers=None) -> str:
        response = client.get(path, query_string={"per_page": 1}, headers=headers or {})
        value = response.json["meta"]["next_cursor"]
        assert value
        return value

    users_cursor = cursor("/api/users")
    posts_cursor = cursor("/api/posts")
    author_cursor = cursor(f"/api/users/{author.id}/posts")
    author_drafts_cursor = cursor(f"/api/users/{author.id}/posts", author.headers)
    cases = [
        ("/api/posts", users_cursor, {}),
        ("/api/users", posts_cursor, {}),
        (f"/api/users/{author.id}/posts", users_cursor, {}),
        (f"/api/users/{author.id}/posts", posts_cursor, {}),
        (f"/api/users/{other.id}/posts", author_cursor, {}),
        (f"/api/users/{other.id}/posts", author_cursor, other.headers),
        ("/api/posts", author_cursor, {}),
        # A cursor from the author's own view (with drafts) is not one for the public view.
        (f"/api/users/{author.id}/posts", author_drafts_cursor, {}),
        (f"/api/users/{author.id}/posts", author_drafts_cursor, other.headers),
    ]
    for path, value, headers in cases:
        response = client.get(path, query_string={"cursor": value}, headers=headers)
        error = assert_error(response, 400, "VALIDATION_ERROR")
        assert "cursor" in {item["field"] for item in error["details"]}, (path, error)
    # Sanity: each cursor works on its own list.
    own = client.get(f"/api/users/{author.id}/posts", query_string={"cursor": author_cursor})
    assert own.status_code == 200
    admin_view = client.get(
        f"/api/users/{author.id}/posts",
        query_string={"cursor": author_drafts_cursor},
        headers=admin.headers,
    )
    assert admin_view.status_code == 200


@pytest.mark.parametrize("path", LISTS)
def test_page_and_cursor_together_are_rejected(client, seed, author, path):
    seed(path, 3)
    cursor = client.get(resolve(path, author), query_string={"per_page": 1}).json["meta"][
        "next_cursor"
    ]
    for page in (1, 2):
        response = client.get(resolve(path, author), query_string={"page": page, "cursor": cursor})
        error = assert_error(response, 400, "VALIDATION_ERROR")
        assert {item["field"] for item in error["details"]} & {"page", "cursor"}


# N+1 guard -------------------------------------------------------------------------------------


@contextmanager
def count_queries(app) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    with app.app_context():
        engine = db.engine
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            yield statements
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def crowd(client, make_account):
    """60 users, four of them authors with 16 published posts and 2 drafts each."""
    authors = [make_account() for _ in range(4)]
    for writer in authors:
        for n in range(16):
            writer.post_as(f"Post {n}", body="text", status="published")
        writer.post_as("Draft 1")
        writer.post_as("Draft 2")
    for _ in range(56):
        register(client)
    return authors


def _queries_for(app, client, path: str, params: dict[str, Any], headers) -> int:
    with count_queries(app) as statements:
        response = client.get(path, query_string=params, headers=headers)
    assert response.status_code == 200, response.json
    assert len(response.json["data"]) == params["per_page"]
    assert statements, "the listener saw no SQL: the guard would be vacuous"
    return len(statements)


def test_list_queries_do_not_grow_with_page_size(app, client, crowd, admin, subtests):
    """Every list, as every kind of viewer, in both modes: one case each (a subtest), on one
    crowd (building it is most of the cost), each case from an empty cache as if it ran alone."""
    for path in LISTS:
        for viewer in ("anonymous", "author", "admin"):
            for mode in ("offset", "cursor"):
                with subtests.test(path=path, viewer=viewer, mode=mode):
                    reset_redis()
                    reset_cache()
                    headers = {"anonymous": {}, "author": crowd[0].headers, "admin": admin.headers}
                    counts = _page_size_costs(app, client, crowd, path, headers[viewer], mode)
                    assert counts[0] == counts[1], counts


def _page_size_costs(app, client, crowd, path: str, headers, mode: str) -> list[int]:
    """The statements a small and a large page cost, in offset or cursor mode."""
    if path == "/api/users/{author}/posts":
        path = path.format(author=crowd[0].id)
        sizes = (5, 15)  # the author has 16 published posts (18 with drafts)
    else:
        sizes = (5, 50)
    # Warm up with another request so first-use work (connections, caches) is not counted.
    client.get(path, query_string={"per_page": 1}, headers=headers)
    counts = []
    for per_page in sizes:
        params: dict[str, Any] = {"per_page": per_page}
        if mode == "cursor":
            first = client.get(path, query_string={"per_page": 1}, headers=headers)
            params["cursor"] = first.json["meta"]["next_cursor"]
        counts.append(_queries_for(app, client, path, params, headers))
    return counts


def test_deep_cursor_page_costs_the_same_as_the_first(app, client, crowd):
    cursor = None
    counts = []
    for _ in range(6):
        params: dict[str, Any] = {"per_page": 10}
        if cursor:
            params["cursor"] = cursor
        with count_queries(app) as statements:
            response = client.get("/api/posts", query_string=params)
        assert response.status_code == 200
        counts.append(len(statements))
        cursor = response.json["meta"]["next_cursor"]
        assert cursor
    # The first page may count (offset mode by default); every cursor page costs the same.
    assert len(set(counts[1:])) == 1, counts
    assert counts[1] <= counts[0], counts


def test_cursor_is_opaque(client, author):
    """The cursor is URL-safe and reveals neither its list nor its position in clear text."""
    post = author.post_as("One", status="published")
    author.post_as("Two", status="published")
    cursor = client.get("/api/posts", query_string={"per_page": 1}).json["meta"]["next_cursor"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor), "URL-safe, no padding to escape"
    padded = cursor + "=" * (-len(cursor) % 4)
    decoded = base64.urlsafe_b64decode(padded)
    assert b"posts" not in decoded
    assert post["created_at"][:10].encode() not in decoded
