"""Posts (contract §3): creation, draft visibility, updates, conditional requests, deletion,
validation, and hostile input stored verbatim."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.extensions import db
from tests.factories import UNKNOWN_ID
from tests.support.assertions import assert_error

POST_FIELDS = {
    "id",
    "author_id",
    "title",
    "slug",
    "body",
    "status",
    "published_at",
    "created_at",
    "updated_at",
    "version",
}
SQL_INJECTIONS = ("'; DROP TABLE posts; --", "1 OR 1=1", '" OR ""="')


def assert_utc(value: str) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    assert value.endswith("+00:00"), value
    return parsed


def assert_post(post: dict[str, Any]) -> None:
    assert set(post) == POST_FIELDS, post
    assert str(uuid.UUID(post["id"])) == post["id"]
    assert str(uuid.UUID(post["author_id"])) == post["author_id"]
    assert post["status"] in ("draft", "published")
    assert_utc(post["created_at"])
    assert_utc(post["updated_at"])
    if post["status"] == "published":
        assert_utc(post["published_at"])
    else:
        assert post["published_at"] is None
    assert isinstance(post["version"], int)


def create(client, account, body: Any, **kwargs: Any):
    return client.post(
        f"/api/users/{account.id}/posts", json=body, headers=account.headers, **kwargs
    )


def list_ids(client, path: str, headers: dict[str, str] | None = None) -> list[str]:
    response = client.get(path, query_string={"per_page": 100}, headers=headers or {})
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["data"]]


def fields_of(error: dict[str, Any]) -> set[str]:
    return {item["field"] for item in error.get("details", [])}


# Creation --------------------------------------------------------------------------------------


def test_create_defaults_to_draft_with_location(client, account):
    response = create(client, account, {"title": "First"})

    assert response.status_code == 201, response.json
    post = response.json["data"]
    assert_post(post)
    assert post["status"] == "draft"
    assert post["published_at"] is None
    assert post["title"] == "First"
    assert post["body"] == ""
    assert post["author_id"] == account.id
    assert post["version"] == 1
    assert response.headers["Location"].endswith(f"/api/posts/{post['id']}")
    fetched = client.get(response.headers["Location"], headers=account.headers)
    assert fetched.status_code == 200
    assert fetched.json["data"] == post


def test_create_published_sets_published_at(client, account):
    before = datetime.now().astimezone()
    response = create(client, account, {"title": "Out", "body": "Text", "status": "published"})

    assert response.status_code == 201, response.json
    post = response.json["data"]
    assert_post(post)
    assert post["status"] == "published"
    published = assert_utc(post["published_at"])
    assert before - timedelta(seconds=5) <= published <= datetime.now().astimezone()
    assert client.get(f"/api/posts/{post['id']}").json["data"] == post


def test_create_as_another_user_is_forbidden(client, account, other, row_counts):
    before = row_counts()
    response = client.post(
        f"/api/users/{other.id}/posts", json={"title": "Impostor"}, headers=account.headers
    )
    assert_error(response, 403, "FORBIDDEN")
    assert row_counts() == before
    assert list_ids(client, f"/api/users/{other.id}/posts", other.headers) == []


def test_admin_may_post_as_another_user(client, admin, account):
    response = client.post(
        f"/api/users/{account.id}/posts",
        json={"title": "On behalf", "status": "published"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.json
    assert response.json["data"]["author_id"] == account.id
    assert list_ids(client, f"/api/users/{account.id}/posts") == [response.json["data"]["id"]]


@pytest.mark.parametrize("author", [UNKNOWN_ID, "not-a-uuid", "12"])
def test_create_for_unknown_author_is_not_found(client, admin, author, row_counts):
    before = row_counts()
    response = client.post(
        f"/api/users/{author}/posts", json={"title": "Nobody"}, headers=admin.headers
    )
    assert_error(response, 404, "NOT_FOUND")
    assert row_counts() == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "garbage-token", "basic"],
)
def test_create_anonymously_is_unauthenticated(client, account, headers, row_counts):
    before = row_counts()
    response = client.post(
        f"/api/users/{account.id}/posts", json={"title": "Anon"}, headers=headers
    )
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert row_counts() == before


# Draft visibility ------------------------------------------------------------------------------


def test_draft_is_visible_only_to_author_and_admin(client, account, other, admin):
    draft = account.post_as("Secret draft")

    for headers in (account.headers, admin.headers):
        response = client.get(f"/api/posts/{draft['id']}", headers=headers)
        assert response.status_code == 200, response.json
        assert response.json["data"]["id"] == draft["id"]
    for headers in (other.headers, {}):
        assert_error(client.get(f"/api/posts/{draft['id']}", headers=headers), 404, "NOT_FOUND")


def test_drafts_never_in_the_public_list(client, account, admin):
    draft = account.post_as("Draft")
    published = account.post_as("Published", status="published")

    for headers in ({}, account.headers, admin.headers):
        response = client.get("/api/posts", headers=headers)
        assert [p["id"] for p in response.json["data"]] == [published["id"]]
        assert response.json["meta"]["total"] == 1
    assert draft["id"] not in list_ids(client, "/api/posts", account.headers)


def test_user_posts_list_shows_drafts_only_to_author_and_admin(client, account, other, admin):
    draft = account.post_as("Draft")
    published = account.post_as("Published", status="published")
    path = f"/api/users/{account.id}/posts"

    for headers in (account.headers, admin.headers):
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        assert [p["id"] for p in response.json["data"]] == [published["id"], draft["id"]]
        assert response.json["meta"]["total"] == 2
    for headers in (other.headers, {}):
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        assert [p["id"] for p in response.json["data"]] == [published["id"]]
        assert response.json["meta"]["total"] == 1


def test_user_posts_of_unknown_user_is_not_found(client):
    assert_error(client.get(f"/api/users/{uuid.uuid4()}/posts"), 404, "NOT_FOUND")
    assert_error(client.get("/api/users/nope/posts"), 404, "NOT_FOUND")


# Updates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({}, {"title", "body", "status"}),
        ({"title": "Only title"}, {"body", "status"}),
        ({"body": "b", "status": "draft"}, {"title"}),
        ({"title": "t", "body": "b"}, {"status"}),
    ],
)
def test_put_requires_every_field(client, account, body, missing, row_counts):
    post = account.post_as("Original", body="Body")
    before = row_counts()

    response = client.put(f"/api/posts/{post['id']}", json=body, headers=account.headers)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert fields_of(error) == missing
    assert row_counts() == before
    assert client.get(f"/api/posts/{post['id']}", headers=account.headers).json["data"] == post


def test_put_replaces_the_post(client, account):
    post = account.post_as("Original", body="Body")

    response = client.put(
        f"/api/posts/{post['id']}",
        json={"title": "New", "body": "New body", "status": "published"},
        headers=account.headers,
    )

    assert response.status_code == 200, response.json
    updated = response.json["data"]
    assert_post(updated)
    assert (updated["title"], updated["body"], updated["status"]) == (
        "New",
        "New body",
        "published",
    )
    assert updated["version"] == post["version"] + 1
    assert updated["created_at"] == post["created_at"]
    assert assert_utc(updated["updated_at"]) >= assert_utc(post["updated_at"])
    assert response.headers["ETag"] == f'"v{updated["version"]}"'
    assert client.get(f"/api/posts/{post['id']}").json["data"] == updated


def test_patch_changes_only_the_given_fields(client, account):
    post = account.post_as("Original", body="Body")

    response = client.patch(
        f"/api/posts/{post['id']}", json={"title": "Renamed"}, headers=account.headers
    )

    assert response.status_code == 200, response.json
    updated = response.json["data"]
    assert updated["title"] == "Renamed"
    assert updated["body"] == "Body"
    assert updated["status"] == "draft"
    assert updated["published_at"] is None
    assert updated["version"] == post["version"] + 1
    fetched = client.get(f"/api/posts/{post['id']}", headers=account.headers).json["data"]
    assert fetched == updated


def test_publish_and_unpublish(client, account, other):
    post = account.post_as("Soon")

    published = client.patch(
        f"/api/posts/{post['id']}", json={"status": "published"}, headers=account.headers
    )
    assert published.status_code == 200, published.json
    assert published.json["data"]["status"] == "published"
    assert_utc(published.json["data"]["published_at"])
    assert list_ids(client, "/api/posts") == [post["id"]]
    assert client.get(f"/api/posts/{post['id']}", headers=other.headers).status_code == 200

    unpublished = client.patch(
        f"/api/posts/{post['id']}", json={"status": "draft"}, headers=account.headers
    )
    assert unpublished.status_code == 200, unpublished.json
    assert unpublished.json["data"]["status"] == "draft"
    assert unpublished.json["data"]["published_at"] is None
    assert unpublished.json["data"]["version"] == post["version"] + 2
    assert list_ids(client, "/api/posts") == []
    assert list_ids(client, f"/api/users/{account.id}/posts") == []
    assert_error(client.get(f"/api/posts/{post['id']}", headers=other.headers), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/posts/{post['id']}"), 404, "NOT_FOUND")


WRITES = [
    ("put", {"title": "Hijack", "body": "x", "status": "draft"}),
    ("patch", {"title": "Hijack"}),
    ("delete", None),
]


@pytest.mark.parametrize(("method", "body"), WRITES, ids=[m for m, _ in WRITES])
def test_another_users_write_is_forbidden(client, account, other, method, body, row_counts):
    post = account.post_as("Mine", status="published")
    before = row_counts()

    response = getattr(client, method)(f"/api/posts/{post['id']}", json=body, headers=other.headers)

    assert_error(response, 403, "FORBIDDEN")
    assert row_counts() == before
    assert client.get(f"/api/posts/{post['id']}").json["data"] == post


@pytest.mark.parametrize(("method", "body"), WRITES, ids=[m for m, _ in WRITES])
def test_another_users_write_to_a_draft_is_not_found(
    client, account, other, method, body, row_counts
):
    post = account.post_as("My draft")
    before = row_counts()

    response = getattr(client, method)(f"/api/posts/{post['id']}", json=body, headers=other.headers)

    assert_error(response, 404, "NOT_FOUND")
    assert row_counts() == before
    assert client.get(f"/api/posts/{post['id']}", headers=account.headers).json["data"] == post


@pytest.mark.parametrize(("method", "body"), WRITES, ids=[m for m, _ in WRITES])
def test_anonymous_write_is_unauthenticated(client, account, method, body, row_counts):
    post = account.post_as("Mine", status="published")
    before = row_counts()

    response = getattr(client, method)(f"/api/posts/{post['id']}", json=body)

    assert_error(response, 401, "UNAUTHENTICATED")
    assert row_counts() == before


def test_admin_may_update_and_delete_any_post(client, account, admin):
    post = account.post_as("Draft by someone")

    put = client.put(
        f"/api/posts/{post['id']}",
        json={"title": "Moderated", "body": "b", "status": "published"},
        headers=admin.headers,
    )
    assert put.status_code == 200, put.json
    assert put.json["data"]["author_id"] == account.id
    patch = client.patch(
        f"/api/posts/{post['id']}", json={"title": "Moderated again"}, headers=admin.headers
    )
    assert patch.status_code == 200, patch.json
    assert patch.json["data"]["version"] == 3

    delete = client.delete(f"/api/posts/{post['id']}", headers=admin.headers)
    assert delete.status_code == 204
    assert_error(client.get(f"/api/posts/{post['id']}", headers=account.headers), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "if_match", ['"v0"', '"v2"', 'W/"v1"', '"garbage"', '"1"'], ids=lambda v: f"If-Match {v}"
)
@pytest.mark.parametrize(("method", "body"), WRITES, ids=[m for m, _ in WRITES])
def test_stale_if_match_is_precondition_failed(client, account, method, body, if_match, row_counts):
    post = account.post_as("Versioned", status="published")
    assert post["version"] == 1
    before = row_counts()

    response = getattr(client, method)(
        f"/api/posts/{post['id']}", json=body, headers={**account.headers, "If-Match": if_match}
    )

    assert_error(response, 412, "PRECONDITION_FAILED")
    assert row_counts() == before
    assert client.get(f"/api/posts/{post['id']}").json["data"] == post


@pytest.mark.parametrize(
    "header", ["garbage", '"v1', "v1", '"v1";"v2"', 'W/ "v1"', '"a"b"', '"' + "x" * 5000 + '"']
)
@pytest.mark.parametrize(("method", "body"), WRITES, ids=[m for m, _ in WRITES])
def test_malformed_if_match_never_matches(client, account, method, body, header, row_counts):
    post = account.post_as("Versioned", status="published")
    before = row_counts()
    response = getattr(client, method)(
        f"/api/posts/{post['id']}", json=body, headers={**account.headers, "If-Match": header}
    )
    assert_error(response, 412, "PRECONDITION_FAILED")
    assert row_counts() == before


@pytest.mark.parametrize("header", ["garbage", "v1", '"v1', 'W/ "v1"', '"v1' + " " * 5000 + '"'])
def test_malformed_if_none_match_never_matches(client, account, header):
    post = account.post_as("Cached", status="published")
    response = client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": header})
    assert response.status_code == 200
    assert response.get_json()["data"]["id"] == post["id"]


def test_weak_if_none_match_matches_and_lists_may_hold_commas(client, account):
    post = account.post_as("Cached", status="published")
    etag = client.get(f"/api/posts/{post['id']}").headers["ETag"]
    for header in (f"W/{etag}", f'"a,b", {etag}', f'"other",\t{etag}'):
        assert (
            client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": header}).status_code
            == 304
        )


@pytest.mark.parametrize(
    ("method", "body"), [WRITES[0], WRITES[1]], ids=[WRITES[0][0], WRITES[1][0]]
)
def test_current_if_match_updates(client, account, method, body):
    post = account.post_as("Versioned", status="published")
    etag = client.get(f"/api/posts/{post['id']}").headers["ETag"]

    response = getattr(client, method)(
        f"/api/posts/{post['id']}", json=body, headers={**account.headers, "If-Match": etag}
    )

    assert response.status_code == 200, response.json
    assert response.json["data"]["version"] == post["version"] + 1
    assert response.json["data"]["title"] == "Hijack"
    assert response.headers["ETag"] != etag
    # The old ETag is stale now.
    again = getattr(client, method)(
        f"/api/posts/{post['id']}", json=body, headers={**account.headers, "If-Match": etag}
    )
    assert_error(again, 412, "PRECONDITION_FAILED")


def test_current_if_match_deletes(client, account):
    post = account.post_as("Versioned", status="published")
    response = client.delete(
        f"/api/posts/{post['id']}", headers={**account.headers, "If-Match": '"v1", "v7"'}
    )
    assert response.status_code == 204
    assert_error(client.get(f"/api/posts/{post['id']}"), 404, "NOT_FOUND")


def test_if_none_match_gives_304(client, account):
    post = account.post_as("Cached", status="published")
    first = client.get(f"/api/posts/{post['id']}")
    etag = first.headers["ETag"]
    assert etag
    assert first.headers["Cache-Control"]

    not_modified = client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.data == b""
    assert not_modified.headers["ETag"] == etag

    listed = client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": f'"x", {etag}'})
    assert listed.status_code == 304

    client.patch(f"/api/posts/{post['id']}", json={"title": "Changed"}, headers=account.headers)
    changed = client.get(f"/api/posts/{post['id']}", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json["data"]["title"] == "Changed"
    assert changed.headers["ETag"] != etag


# Deletion --------------------------------------------------------------------------------------


def test_delete_then_gone_everywhere(client, account, admin):
    keep = account.post_as("Keep", status="published")
    post = account.post_as("Doomed", status="published")
    assert post["id"] in list_ids(client, "/api/posts")

    response = client.delete(f"/api/posts/{post['id']}", headers=account.headers)

    assert response.status_code == 204
    assert response.data == b""
    path = f"/api/posts/{post['id']}"
    for headers in ({}, account.headers, admin.headers):
        assert_error(client.get(path, headers=headers), 404, "NOT_FOUND")
    assert_error(client.delete(path, headers=account.headers), 404, "NOT_FOUND")
    assert_error(client.patch(path, json={"title": "x"}, headers=account.headers), 404, "NOT_FOUND")
    assert_error(
        client.put(path, json={"title": "x", "body": "", "status": "draft"}, headers=admin.headers),
        404,
        "NOT_FOUND",
    )
    assert list_ids(client, "/api/posts") == [keep["id"]]
    assert list_ids(client, f"/api/users/{account.id}/posts", account.headers) == [keep["id"]]
    assert client.get("/api/posts").json["meta"]["total"] == 1


# Validation ------------------------------------------------------------------------------------

INVALID_BODIES = [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": 123}, "title"),
    ({"title": None}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": {"a": 1}}, "title"),
    ({"title": True}, "title"),
    ({"title": "nul\x00byte"}, "title"),
    ({"title": "bell\x07"}, "title"),
    ({"title": "two\nlines"}, "title"),
    ({"title": "esc\x1b[31m"}, "title"),
    ({"title": "c1\x85"}, "title"),
    ({"title": "ok", "body": "nul\x00byte"}, "body"),
    ({"title": "ok", "body": "del\x7f"}, "body"),
    ({"title": "ok", "body": 5}, "body"),
    ({"title": "ok", "body": None}, "body"),
    ({"title": "ok", "body": "x" * 100_001}, "body"),
    ({"title": "ok", "status": "archived"}, "status"),
    ({"title": "ok", "status": "Published"}, "status"),
    ({"title": "ok", "status": ""}, "status"),
    ({"title": "ok", "status": None}, "status"),
    ({"title": "ok", "status": 1}, "status"),
    ({"title": "ok", "author_id": UNKNOWN_ID}, "author_id"),
    ({"title": "ok", "id": UNKNOWN_ID}, "id"),
    ({"title": "ok", "version": 5}, "version"),
    ({"title": "ok", "published_at": "2020-01-01T00:00:00+00:00"}, "published_at"),
    ({"body": "no title"}, "title"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_BODIES, ids=lambda v: repr(v)[:40])
def test_create_rejects_invalid_fields(client, account, body, field, row_counts):
    before = row_counts()
    error = assert_error(create(client, account, body), 400, "VALIDATION_ERROR")
    assert field in fields_of(error)
    assert row_counts() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [(b, f) for b, f in INVALID_BODIES if f != "title" or "title" in b],
    ids=lambda v: repr(v)[:40],
)
def test_patch_rejects_invalid_fields(client, account, body, field, row_counts):
    post = account.post_as("Original", body="Body")
    before = row_counts()

    response = client.patch(f"/api/posts/{post['id']}", json=body, headers=account.headers)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in fields_of(error)
    assert row_counts() == before
    assert client.get(f"/api/posts/{post['id']}", headers=account.headers).json["data"] == post


@pytest.mark.parametrize(
    "payload", ["[]", '"title"', "1", "null", '[{"title": "x"}]'], ids=lambda v: v[:10]
)
def test_create_rejects_a_body_that_is_not_an_object(client, account, payload, row_counts):
    before = row_counts()
    response = client.post(
        f"/api/users/{account.id}/posts",
        data=payload,
        content_type="application/json",
        headers=account.headers,
    )
    assert_error(response, 400, "VALIDATION_ERROR")
    assert row_counts() == before


def test_lone_surrogate_is_rejected(client, account, row_counts):
    before = row_counts()
    response = client.post(
        f"/api/users/{account.id}/posts",
        data='{"title": "bad \\ud800 half"}',
        content_type="application/json",
        headers=account.headers,
    )
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "title" in fields_of(error)
    assert row_counts() == before


@pytest.mark.parametrize(
    "fields",
    [
        {"title": "x" * 200},
        {"title": "日" * 200},
        {"title": "😀" * 200},
        {"title": "t", "body": "x" * 100_000},
        {"title": "t", "body": "é" * 100_000},
        {"title": "t", "body": "line one\n\tline two\r\n"},
    ],
    ids=["title-200", "title-200-cjk", "title-200-emoji", "body-100k", "body-100k-2byte", "ws"],
)
def test_limits_are_inclusive_and_stored_verbatim(client, account, fields):
    response = create(client, account, fields)
    assert response.status_code == 201, response.json
    post = client.get(f"/api/posts/{response.json['data']['id']}", headers=account.headers)
    for key, value in fields.items():
        assert post.json["data"][key] == value


def test_unicode_is_stored_verbatim(client, account):
    title = "Ünïcødé — 日本語 🚀 עברית ﷽ Ω≈ç√"
    body = "Zwölf Boxkämpfer 🥊\n中文段落\n😀👍🏽👨‍👩‍👧 combining: é (NFC)"
    post = account.post_as(title, body=body, status="published")

    assert post["title"] == title
    assert post["body"] == body
    fetched = client.get(f"/api/posts/{post['id']}").json["data"]
    assert (fetched["title"], fetched["body"]) == (title, body)
    listed = client.get("/api/posts").json["data"][0]
    assert (listed["title"], listed["body"]) == (title, body)


# Hostile input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", SQL_INJECTIONS)
def test_sql_injection_strings_are_stored_verbatim(client, make_account, app, text, row_counts):
    author = make_account(display_name=text)
    assert author.user["display_name"] == text
    post = author.post_as(text, body=text, status="published")

    assert (post["title"], post["body"]) == (text, text)
    fetched = client.get(f"/api/posts/{post['id']}").json["data"]
    assert (fetched["title"], fetched["body"]) == (text, text)
    assert client.get(f"/api/users/{author.id}").json["data"]["display_name"] == text
    listed = client.get("/api/posts").json
    assert [(p["title"], p["body"]) for p in listed["data"]] == [(text, text)]

    patched = client.patch(
        f"/api/posts/{post['id']}", json={"title": text + " again"}, headers=author.headers
    )
    assert patched.json["data"]["title"] == text + " again"

    # Every table is still there and holds what the API reported.
    counts = row_counts()
    assert counts["posts"] == 1
    assert counts["users"] == 1
    with app.app_context():
        tables = set(sa.inspect(db.engine).get_table_names())
        db.session.remove()
    assert {"users", "posts", "events"} <= tables


@pytest.mark.parametrize("text", SQL_INJECTIONS)
def test_sql_injection_in_query_and_path_is_harmless(client, account, text, row_counts):
    post = account.post_as("Safe", status="published")
    before = row_counts()

    for params in ({"page": text}, {"per_page": text}, {"cursor": text}):
        assert_error(client.get("/api/posts", query_string=params), 400, "VALIDATION_ERROR")
    assert_error(client.get(f"/api/posts/{text}"), 404, "NOT_FOUND")
    assert_error(client.get(f"/api/users/{text}/posts"), 404, "NOT_FOUND")
    assert row_counts() == before
    assert list_ids(client, "/api/posts") == [post["id"]]
