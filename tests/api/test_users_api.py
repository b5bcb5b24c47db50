"""Contract §3, users rows (with §2's conventions): /api/users, /api/users/{id}, /api/me."""

from __future__ import annotations

import json
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.users.models import User
from tests.factories import PASSWORD, UNKNOWN_ID, bearer, login, register, unique
from tests.support.assertions import assert_error

USER_FIELDS = {"id", "username", "display_name", "bio", "created_at", "updated_at", "version"}
PROFILE = ("email", "username", "display_name", "bio")
NEW_PASSWORD = "a brand new passphrase"


# Helpers ---------------------------------------------------------------------------------------


def user_row(app: Any, user_id: str) -> dict[str, Any] | None:
    """The user's database row (deleted or not), every column."""
    with app.app_context():
        user = db.session.scalar(
            sa.select(User)
            .where(User.public_id == uuid.UUID(user_id))
            .execution_options(include_deleted=True)
        )
        row = (
            None
            if user is None
            else {attr.key: getattr(user, attr.key) for attr in sa.inspect(User).column_attrs}
        )
        db.session.remove()
        return row


@pytest.fixture
def unchanged(app: Any, row_counts: Callable[[], dict[str, int]]) -> Callable[..., Any]:
    """`with unchanged(user_id, ...):` asserts the block changed no row count and no such user."""

    @contextmanager
    def check(*user_ids: str) -> Iterator[None]:
        before = (row_counts(), [user_row(app, u) for u in user_ids])
        yield
        after = (row_counts(), [user_row(app, u) for u in user_ids])
        assert after == before

    return check


def detail_fields(error: dict[str, Any]) -> set[str]:
    return {item["field"] for item in error.get("details", [])}


def assert_no_secrets(response: Any) -> None:
    """No password, hash or internal key in a response."""
    text = response.get_data(as_text=True)
    assert "$argon2" not in text
    assert PASSWORD not in text
    assert NEW_PASSWORD not in text

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert "password" not in key.lower(), key
                assert "hash" not in key.lower(), key
                if key == "id" or key.endswith("_id"):
                    assert str(uuid.UUID(item)) == item, (key, item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    if text:
        walk(response.get_json())


def assert_user_shape(data: dict[str, Any], *, with_email: bool) -> None:
    assert set(data) == USER_FIELDS | ({"email"} if with_email else set())
    assert str(uuid.UUID(data["id"])) == data["id"]
    assert isinstance(data["version"], int)
    for key in ("created_at", "updated_at"):
        stamp = datetime.fromisoformat(data[key])
        assert stamp.utcoffset() == timedelta(0), data[key]


def new_user_body(**fields: Any) -> dict[str, Any]:
    name = fields.pop("username", None) or unique()
    return {"email": f"{name}@example.com", "username": name, "password": PASSWORD, **fields}


def get_user(client: Any, user_id: str, headers: dict[str, str] | None = None) -> Any:
    return client.get(f"/api/users/{user_id}", headers=headers or {})


def put_body(user: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**{k: user[k] for k in PROFILE}, **changes}


# POST /api/users -------------------------------------------------------------------------------


def test_register_returns_201_location_and_own_email(client):
    body = new_user_body(display_name="Ada Lovelace", bio="Analyst.")
    response = client.post("/api/users", json=body)

    assert response.status_code == 201
    assert_no_secrets(response)
    data = response.get_json()["data"]
    assert_user_shape(data, with_email=True)
    assert data["email"] == body["email"]
    assert data["username"] == body["username"]
    assert (data["display_name"], data["bio"]) == ("Ada Lovelace", "Analyst.")
    assert response.headers["Location"].endswith(f"/api/users/{data['id']}")
    assert client.get(response.headers["Location"]).get_json()["data"]["id"] == data["id"]


@pytest.mark.parametrize(
    ("taken", "field"),
    [
        (lambda u: {"email": u["email"].upper()}, "email"),
        (lambda u: {"username": u["username"].upper()}, "username"),
    ],
    ids=["email", "username"],
)
def test_register_conflicts_case_insensitively(client, account, unchanged, taken, field):
    body = new_user_body()
    body.update(taken(account.user))

    with unchanged(account.id):
        response = client.post("/api/users", json=body)

    error = assert_error(response, 409, "CONFLICT")
    assert detail_fields(error) == {field}


def test_register_conflict_names_both_fields(client, account, unchanged):
    body = new_user_body(email=account.email.title(), username=account.user["username"].title())
    with unchanged(account.id):
        error = assert_error(client.post("/api/users", json=body), 409, "CONFLICT")
    assert detail_fields(error) == {"email", "username"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"email", "username", "password"}),
        ({"username": "ada_l", "password": PASSWORD}, {"email"}),
        ({"email": "ada@example.com", "password": PASSWORD}, {"username"}),
        ({"email": "ada@example.com", "username": "ada_l"}, {"password"}),
    ],
    ids=["empty", "no-email", "no-username", "no-password"],
)
def test_register_missing_fields(client, row_counts, body, fields):
    before = row_counts()
    error = assert_error(client.post("/api/users", json=body), 400, "VALIDATION_ERROR")
    assert detail_fields(error) == fields
    assert row_counts() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        # Wrong types.
        ({"email": 12345}, "email"),
        ({"username": 12345}, "username"),
        ({"password": 12345678}, "password"),
        ({"display_name": 1.5}, "display_name"),
        ({"bio": True}, "bio"),
        ({"email": ["a@example.com"]}, "email"),
        ({"username": ["ada_l"]}, "username"),
        ({"password": [PASSWORD]}, "password"),
        ({"email": None}, "email"),
        ({"username": None}, "username"),
        ({"password": None}, "password"),
        ({"display_name": None}, "display_name"),
        ({"bio": None}, "bio"),
        ({"display_name": {"first": "Ada"}}, "display_name"),
        ({"bio": {"text": "nested"}}, "bio"),
        # Unknown fields, including ones a client must never set.
        ({"is_admin": True}, "is_admin"),
        ({"id": UNKNOWN_ID}, "id"),
        ({"version": 7}, "version"),
        ({"nickname": "x"}, "nickname"),
        # Sizes.
        ({"username": "u" * 33}, "username"),
        ({"username": "ab"}, "username"),
        ({"email": f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 58}.com"}, "email"),
        ({"display_name": "d" * 101}, "display_name"),
        ({"bio": "b" * 2001}, "bio"),
        ({"password": "p" * 129}, "password"),
        ({"password": "p" * 7}, "password"),
        ({"password": ""}, "password"),
        # Formats.
        ({"email": "not-an-email"}, "email"),
        ({"email": ""}, "email"),
        ({"username": "has space"}, "username"),
        ({"username": "semi;colon"}, "username"),
        ({"username": "slash/name"}, "username"),
        ({"username": "émile"}, "username"),
        ({"username": "grin😀"}, "username"),
        ({"username": ".leading_dot"}, "username"),
        ({"username": "nul\x00name"}, "username"),
        # Control characters, NUL bytes, lone surrogates.
        ({"display_name": "Ada\x00Lovelace"}, "display_name"),
        ({"display_name": "Ada\x07"}, "display_name"),
        ({"display_name": "two\nlines"}, "display_name"),
        ({"display_name": "\x1b[31mred"}, "display_name"),
        ({"display_name": "c1\x85control"}, "display_name"),
        ({"display_name": "lone \ud800 surrogate"}, "display_name"),
        ({"bio": "nul\x00byte"}, "bio"),
        ({"bio": "bell\x07"}, "bio"),
        ({"bio": "\x1b[2Jclear"}, "bio"),
        ({"bio": "del\x7f"}, "bio"),
    ],
)
def test_register_rejects_invalid_field(client, row_counts, changes, field):
    body = {**new_user_body(), **changes}
    before = row_counts()

    response = client.post("/api/users", data=json.dumps(body), content_type="application/json")

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert detail_fields(error) == {field}
    assert row_counts() == before


def test_register_reports_every_invalid_field(client, row_counts):
    body = {"email": 5, "username": ["x"], "password": None, "bio": {"a": 1}, "extra": 1}
    before = row_counts()
    error = assert_error(client.post("/api/users", json=body), 400, "VALIDATION_ERROR")
    assert detail_fields(error) == {"email", "username", "password", "bio", "extra"}
    assert row_counts() == before


@pytest.mark.parametrize("raw", ["[]", '[{"email": "a@example.com"}]', '"a string"', "null", "42"])
def test_register_body_must_be_an_object(client, row_counts, raw):
    before = row_counts()
    response = client.post("/api/users", data=raw, content_type="application/json")
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error.get("details"), error
    assert row_counts() == before


@pytest.mark.parametrize(
    "raw",
    [b'{"email": ', b"{'email': 'a@example.com'}", b"{,}", b'{"a": 1} trailing', b"\xff\xfe{}"],
    ids=["truncated", "single-quotes", "stray-comma", "trailing", "not-utf8"],
)
def test_register_invalid_json_is_400(client, row_counts, raw):
    before = row_counts()
    response = client.post("/api/users", data=raw, content_type="application/json")
    assert_error(response, 400, "VALIDATION_ERROR")
    assert row_counts() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": json.dumps(new_user_body()), "content_type": "text/plain"},
        {"data": new_user_body()},  # application/x-www-form-urlencoded
        {"data": new_user_body(), "content_type": "multipart/form-data"},
        {"data": "<user/>", "content_type": "application/xml"},
    ],
    ids=["text-plain", "form", "multipart", "xml"],
)
def test_register_non_json_body_is_415(client, row_counts, kwargs):
    before = row_counts()
    assert_error(client.post("/api/users", **kwargs), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert row_counts() == before


def test_register_body_too_large_is_413(client, row_counts):
    before = row_counts()
    body = new_user_body(bio="b" * (1024 * 1024 + 1))
    assert_error(client.post("/api/users", json=body), 413, "PAYLOAD_TOO_LARGE")
    assert row_counts() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/users/{id}"),
        ("DELETE", "/api/users"),
        ("PUT", "/api/users"),
        ("PUT", "/api/me"),
    ],
)
def test_wrong_method_is_405(client, account, row_counts, method, path):
    before = row_counts()
    response = client.open(
        path.format(id=account.id), method=method, json={}, headers=account.headers
    )
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert method not in response.headers["Allow"]
    assert row_counts() == before


def test_register_accepts_the_boundary_sizes(client):
    name = "u" + unique()[1:] + "_" * 21
    assert len(name) == 32
    email = f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 57}.com"
    assert len(email) == 254
    password = "p" * 128
    user = register(
        client,
        username=name,
        email=email,
        password=password,
        display_name="d" * 100,
        bio="b" * 2000,
    )
    assert (user["username"], user["email"]) == (name, email)
    assert (len(user["display_name"]), len(user["bio"])) == (100, 2000)
    login(client, email, password)
    register(client, password="p" * 8)


UNICODE_TEXT = [
    ("😀🎉 👩‍👩‍👧‍👦 🇯🇵", "Emoji everywhere 🚀🔥 and a family 👨‍👩‍👧"),
    ("山田太郎", "東京都に住んでいます。简体中文。한국어도 합니다."),
    ("שלום עולם", "مرحبا بالعالم — نص من اليمين إلى اليسار\u200f mixed with LTR."),
    ("Zoë Ångström", "Ligne 1\nLigne 2\twith a tab — «quotes» \u2018curly\u2019"),
]


@pytest.mark.parametrize(
    ("display_name", "bio"), UNICODE_TEXT, ids=["emoji", "cjk", "rtl", "latin"]
)
def test_register_stores_unicode_verbatim(client, app, display_name, bio):
    assert unicodedata.is_normalized("NFC", display_name)
    assert unicodedata.is_normalized("NFC", bio)
    user = register(client, display_name=display_name, bio=bio)
    assert (user["display_name"], user["bio"]) == (display_name, bio)

    fetched = get_user(client, user["id"]).get_json()["data"]
    assert (fetched["display_name"], fetched["bio"]) == (display_name, bio)
    row = user_row(app, user["id"])
    assert row is not None
    assert (row["display_name"], row["bio"]) == (display_name, bio)


def test_register_normalises_unicode_to_nfc(client):
    decomposed = unicodedata.normalize("NFD", "Amélie Poulain")
    assert decomposed != "Amélie Poulain"
    user = register(client, display_name=decomposed, bio=unicodedata.normalize("NFD", "Café ñ"))
    assert user["display_name"] == "Amélie Poulain"
    assert user["bio"] == "Café ñ"


def register_together(app: Any, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """POST every body at once, each from its own thread and client; (status, JSON) of each."""
    barrier = threading.Barrier(len(bodies))

    def attempt(body: dict[str, Any]) -> tuple[int, Any]:
        client = app.test_client()
        barrier.wait(timeout=10)
        response = client.post("/api/users", json=body)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(attempt, bodies))


@pytest.mark.parametrize("field", ["email", "username"])
def test_concurrent_registrations_with_the_same_value(app, row_counts, field):
    """Both requests pass the "is it free?" check together; the database decides: one 201."""
    for _ in range(5):
        shared = unique()
        bodies = [new_user_body(), new_user_body()]
        for body in bodies:
            body[field] = f"{shared}@example.com" if field == "email" else shared

        before = row_counts()["users"]
        results = register_together(app, bodies)

        statuses = sorted(status for status, _ in results)
        assert statuses == [201, 409], results
        conflict = next(body for status, body in results if status == 409)
        assert conflict["error"]["code"] == "CONFLICT"
        assert field in detail_fields(conflict["error"])
        assert row_counts()["users"] == before + 1


# GET /api/users/{id} ---------------------------------------------------------------------------


def test_get_user_hides_email_from_anonymous_and_others(client, account, make_account):
    other = make_account()
    for headers in ({}, other.headers):
        response = get_user(client, account.id, headers)
        assert response.status_code == 200
        assert_no_secrets(response)
        data = response.get_json()["data"]
        assert_user_shape(data, with_email=False)
        assert data["id"] == account.id
        assert data["username"] == account.user["username"]


def test_get_user_shows_email_to_self_and_admin(client, account, admin):
    for headers in (account.headers, admin.headers):
        response = get_user(client, account.id, headers)
        assert response.status_code == 200
        assert_no_secrets(response)
        data = response.get_json()["data"]
        assert_user_shape(data, with_email=True)
        assert data["email"] == account.email


@pytest.mark.parametrize(
    "user_id",
    [
        UNKNOWN_ID,
        "abc",
        "123",
        "0",
        "-1",
        "None",
        "null",
        "00000000-0000-0000-0000-00000000000g",
        "{uuid}x",
        "x{uuid}",
        "{uuid}-0000",
        "{uuid}/",
        "{uuid}%00",
        "{uuid}'--",
    ],
)
def test_get_user_unknown_or_malformed_id_is_404(client, account, user_id):
    response = client.get(f"/api/users/{user_id.format(uuid=account.id)}")
    assert_error(response, 404, "NOT_FOUND")


def test_get_user_etag_and_conditional_get(client, account):
    response = get_user(client, account.id)
    etag = response.headers.get("ETag")
    assert etag
    assert response.headers.get("Cache-Control")

    not_modified = get_user(client, account.id, {"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.get_data() == b""
    assert not_modified.headers.get("ETag") == etag

    other_tag = get_user(client, account.id, {"If-None-Match": '"something-else"'})
    assert other_tag.status_code == 200

    patched = client.patch(f"/api/users/{account.id}", json={"bio": "new"}, headers=account.headers)
    assert patched.status_code == 200
    assert patched.headers.get("ETag") not in (None, etag)
    after = get_user(client, account.id, {"If-None-Match": etag})
    assert after.status_code == 200
    assert after.get_json()["data"]["bio"] == "new"
    # The PATCH answered the owner (with email): the owner's GET carries the same tag.
    mine = get_user(client, account.id, account.headers)
    assert mine.headers.get("ETag") == patched.headers.get("ETag")


# GET /api/users --------------------------------------------------------------------------------


def test_list_users_never_shows_emails(client, make_account, admin):
    members = [make_account() for _ in range(3)]
    everyone = {a.id for a in [*members, admin]}

    for headers in ({}, members[0].headers, admin.headers):
        response = client.get("/api/users", headers=headers)
        assert response.status_code == 200
        assert_no_secrets(response)
        body = response.get_json()
        assert {u["id"] for u in body["data"]} == everyone
        for item in body["data"]:
            assert_user_shape(item, with_email=False)
        assert body["meta"]["total"] == len(everyone)
        assert body["meta"]["next_cursor"] is None
        assert all(a.email not in response.get_data(as_text=True) for a in members)


def test_list_users_newest_first_and_paginated(client):
    ids = [register(client)["id"] for _ in range(3)]
    body = client.get("/api/users?page=1&per_page=2").get_json()
    assert [u["id"] for u in body["data"]] == ids[::-1][:2]
    assert body["meta"]["page"] == 1
    assert body["meta"]["per_page"] == 2
    assert body["meta"]["total"] == 3
    assert body["meta"]["next_cursor"]
    second = client.get("/api/users?page=2&per_page=2").get_json()
    assert [u["id"] for u in second["data"]] == ids[:1]


# GET /api/me -----------------------------------------------------------------------------------


def test_me_requires_a_token(client):
    response = client.get("/api/me")
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_me_returns_the_callers_own_user(client, account):
    response = client.get("/api/me", headers=account.headers)
    assert response.status_code == 200
    assert_no_secrets(response)
    data = response.get_json()["data"]
    assert_user_shape(data, with_email=True)
    assert (data["id"], data["email"]) == (account.id, account.email)


# PUT and PATCH /api/users/{id} -----------------------------------------------------------------


def test_put_requires_every_mutable_field(client, account, unchanged):
    url = f"/api/users/{account.id}"
    with unchanged(account.id):
        error = assert_error(
            client.put(url, json={}, headers=account.headers), 400, "VALIDATION_ERROR"
        )
        assert detail_fields(error) == set(PROFILE)
        error = assert_error(
            client.put(url, json={"bio": "only this"}, headers=account.headers),
            400,
            "VALIDATION_ERROR",
        )
        assert detail_fields(error) == {"email", "username", "display_name"}


def test_put_replaces_the_profile(client, account):
    name = unique("new")
    body = {
        "email": f"{name}@example.com",
        "username": name,
        "display_name": "New Name",
        "bio": "New bio.",
    }
    response = client.put(f"/api/users/{account.id}", json=body, headers=account.headers)
    assert response.status_code == 200
    assert_no_secrets(response)
    data = response.get_json()["data"]
    assert {k: data[k] for k in PROFILE} == body
    assert data["version"] == account.user["version"] + 1
    fetched = get_user(client, account.id, account.headers).get_json()["data"]
    assert fetched == data


def test_patch_changes_only_the_given_fields(client, account):
    response = client.patch(
        f"/api/users/{account.id}", json={"bio": "Just the bio."}, headers=account.headers
    )
    assert response.status_code == 200
    assert_no_secrets(response)
    data = response.get_json()["data"]
    assert data["bio"] == "Just the bio."
    for key in ("email", "username", "display_name", "created_at"):
        assert data[key] == account.user[key]
    assert data["version"] == account.user["version"] + 1
    updated = datetime.fromisoformat(data["updated_at"])
    assert updated > datetime.fromisoformat(account.user["updated_at"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"username": "u" * 33}, "username"),
        ({"email": "nope"}, "email"),
        ({"display_name": "nul\x00"}, "display_name"),
        ({"bio": None}, "bio"),
        ({"is_admin": True}, "is_admin"),
        ({"version": 99}, "version"),
        ({"password_hash": "x"}, "password_hash"),
    ],
)
def test_patch_rejects_invalid_fields(client, account, unchanged, changes, field):
    with unchanged(account.id):
        response = client.patch(f"/api/users/{account.id}", json=changes, headers=account.headers)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert field in detail_fields(error)


def test_patch_to_a_taken_email_or_username_is_409(client, account, make_account, unchanged):
    other = make_account()
    url = f"/api/users/{account.id}"
    with unchanged(account.id, other.id):
        error = assert_error(
            client.patch(url, json={"email": other.email.upper()}, headers=account.headers),
            409,
            "CONFLICT",
        )
        assert detail_fields(error) == {"email"}
        error = assert_error(
            client.patch(
                url, json={"username": other.user["username"].upper()}, headers=account.headers
            ),
            409,
            "CONFLICT",
        )
        assert detail_fields(error) == {"username"}


def write_request(client: Any, method: str, target: Any, headers: dict[str, str]) -> Any:
    url = f"/api/users/{target.id}"
    if method == "PUT":
        return client.put(url, json=put_body(target.user, bio="changed"), headers=headers)
    if method == "PATCH":
        return client.patch(url, json={"bio": "changed"}, headers=headers)
    return client.delete(url, headers=headers)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_someone_elses_account_is_403(client, account, make_account, unchanged, method):
    intruder = make_account()
    with unchanged(account.id, intruder.id):
        response = write_request(client, method, account, intruder.headers)
    assert_error(response, 403, "FORBIDDEN")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_anonymous_writes_are_401(client, account, unchanged, method):
    with unchanged(account.id):
        response = write_request(client, method, account, {})
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_admin_may_change_any_account(client, account, admin, method):
    response = write_request(client, method, account, admin.headers)
    if method == "DELETE":
        assert response.status_code == 204
        assert_error(get_user(client, account.id, admin.headers), 404, "NOT_FOUND")
        return
    assert response.status_code == 200, response.get_json()
    data = response.get_json()["data"]
    assert data["bio"] == "changed"
    assert data["email"] == account.email
    assert data["version"] == account.user["version"] + 1


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_stale_if_match_is_412_and_changes_nothing(client, account, unchanged, method):
    etag = get_user(client, account.id).headers["ETag"]
    bumped = client.patch(f"/api/users/{account.id}", json={"bio": "v2"}, headers=account.headers)
    assert bumped.status_code == 200
    account.user = bumped.get_json()["data"]

    stale = {**account.headers, "If-Match": etag}
    with unchanged(account.id):
        response = write_request(client, method, account, stale)
    assert_error(response, 412, "PRECONDITION_FAILED")

    garbage = {**account.headers, "If-Match": '"not-an-etag"'}
    with unchanged(account.id):
        assert_error(write_request(client, method, account, garbage), 412, "PRECONDITION_FAILED")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_current_if_match_succeeds(client, account, method):
    etag = get_user(client, account.id, account.headers).headers["ETag"]
    headers = {**account.headers, "If-Match": etag}
    response = write_request(client, method, account, headers)
    if method == "DELETE":
        assert response.status_code == 204
        return
    assert response.status_code == 200
    assert response.get_json()["data"]["version"] == account.user["version"] + 1
    assert response.headers["ETag"] != etag
    # The old tag is stale now.
    assert_error(write_request(client, method, account, headers), 412, "PRECONDITION_FAILED")


# Passwords -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"password": NEW_PASSWORD},
        {"password": NEW_PASSWORD, "current_password": "not my password"},
        {"password": NEW_PASSWORD, "current_password": ""},
    ],
    ids=["no-current", "wrong-current", "empty-current"],
)
def test_password_change_needs_the_current_password(client, account, unchanged, body):
    with unchanged(account.id):
        response = client.patch(f"/api/users/{account.id}", json=body, headers=account.headers)
    error = assert_error(response, 403, "FORBIDDEN")
    assert "current_password" in detail_fields(error)
    assert PASSWORD not in response.get_data(as_text=True)
    login(client, account.email, PASSWORD)


def test_a_lone_current_password_changes_nothing(client, account, unchanged):
    with unchanged(account.id):
        response = client.patch(
            f"/api/users/{account.id}", json={"current_password": PASSWORD}, headers=account.headers
        )
    assert response.status_code == 200
    assert response.get_json()["data"]["version"] == account.user["version"]
    login(client, account.email, PASSWORD)


def test_password_change_then_only_the_new_one_works(client, account):
    response = client.patch(
        f"/api/users/{account.id}",
        json={"password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=account.headers,
    )
    assert response.status_code == 200
    assert_no_secrets(response)
    assert response.get_json()["data"]["version"] == account.user["version"] + 1

    old = client.post("/api/auth/login", json={"email": account.email, "password": PASSWORD})
    assert_error(old, 401, "UNAUTHENTICATED")
    login(client, account.email, NEW_PASSWORD)


def test_password_change_validates_the_new_password(client, account, unchanged):
    with unchanged(account.id):
        response = client.patch(
            f"/api/users/{account.id}",
            json={"password": "short", "current_password": PASSWORD},
            headers=account.headers,
        )
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert "password" in detail_fields(error)


def test_admin_may_reset_someone_elses_password(client, account, admin):
    response = client.patch(
        f"/api/users/{account.id}", json={"password": NEW_PASSWORD}, headers=admin.headers
    )
    assert response.status_code == 200
    assert_no_secrets(response)
    login(client, account.email, NEW_PASSWORD)


# DELETE /api/users/{id} ------------------------------------------------------------------------


def test_delete_user_is_a_soft_delete_everywhere(client, account, make_account, admin, app):
    published = account.post_as("Public", status="published")
    draft = account.post_as("Draft", status="draft")
    bystander = make_account()
    kept = bystander.post_as("Stays", status="published")

    response = client.delete(f"/api/users/{account.id}", headers=account.headers)
    assert response.status_code == 204
    assert response.get_data() == b""

    for headers in ({}, admin.headers):
        assert_error(get_user(client, account.id, headers), 404, "NOT_FOUND")
        for post in (published, draft):
            assert_error(client.get(f"/api/posts/{post['id']}", headers=headers), 404, "NOT_FOUND")
        assert_error(
            client.get(f"/api/users/{account.id}/posts", headers=headers), 404, "NOT_FOUND"
        )
        listed = client.get("/api/posts", headers=headers).get_json()["data"]
        assert [p["id"] for p in listed] == [kept["id"]]
        users = client.get("/api/users", headers=headers).get_json()
        assert account.id not in {u["id"] for u in users["data"]}
        assert users["meta"]["total"] == 2

    # Deleted, not removed: the row remains with its deletion time.
    row = user_row(app, account.id)
    assert row is not None
    assert row["deleted_at"] is not None

    # Writes to the deleted user are 404 as well, even for an admin.
    assert_error(
        client.patch(f"/api/users/{account.id}", json={"bio": "x"}, headers=admin.headers),
        404,
        "NOT_FOUND",
    )
    assert_error(client.delete(f"/api/users/{account.id}", headers=admin.headers), 404, "NOT_FOUND")


def test_deleted_users_email_and_username_are_free_again(client, account):
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204

    again = register(client, email=account.email.upper(), username=account.user["username"].upper())
    assert again["id"] != account.id
    assert again["email"].lower() == account.email.lower()
    assert_error(get_user(client, account.id), 404, "NOT_FOUND")
    login(client, account.email)


def test_deleted_users_token_is_refused(client, account):
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    # Even once someone else has registered the same email.
    register(client, email=account.email, username=account.user["username"])

    for response in (
        client.get("/api/me", headers=account.headers),
        client.patch(f"/api/users/{account.id}", json={"bio": "x"}, headers=account.headers),
        client.post(
            f"/api/users/{account.id}/posts", json={"title": "ghost"}, headers=account.headers
        ),
    ):
        assert_error(response, 401, "UNAUTHENTICATED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    refused = client.post("/api/auth/refresh", headers=bearer(account.tokens["refresh_token"]))
    assert_error(refused, 401, "UNAUTHENTICATED")


def test_etag_differs_between_the_public_and_the_private_representation(client, account):
    public = get_user(client, account.id)
    private = get_user(client, account.id, account.headers)
    assert "email" not in public.get_json()["data"]
    assert "email" in private.get_json()["data"]
    assert public.headers["ETag"] != private.headers["ETag"]
    # The public tag does not confirm the private representation: full 200 with the email.
    again = get_user(
        client, account.id, {**account.headers, "If-None-Match": public.headers["ETag"]}
    )
    assert again.status_code == 200
    assert "email" in again.get_json()["data"]
    # Either tag names the same version for If-Match.
    for which in ("public", "private"):
        headers = account.headers if which == "private" else {}
        tag = get_user(client, account.id, headers).headers["ETag"]
        ok = client.patch(
            f"/api/users/{account.id}",
            json={"bio": f"via {which}"},
            headers={**account.headers, "If-Match": tag},
        )
        assert ok.status_code == 200, ok.get_json()
