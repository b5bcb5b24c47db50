"""Injection sweep: classic SQL-injection payloads through every string field of every write
body, every list query parameter, every path segment and the conditional/auth headers.

Each request either stores the payload and reads it back verbatim, or is refused with the
contract's 400/401/404/412 envelope. No request takes 2 s or more (so `pg_sleep(5)` never ran,
on PostgreSQL), and afterwards every table still exists and holds exactly the rows the accepted
writes made (one event per write, too).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db
from app.users.schemas import USERNAME_RE
from tests.factories import PASSWORD, Account, bearer, unique
from tests.support.assertions import assert_error
from tests.support.backends import TABLES

PAYLOADS = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    '" OR ""="',
    "1; SELECT pg_sleep(5)",
    "%' --",
    "admin'--",
    "1) OR (1=1",
]
# Local parts that are valid email syntax and still carry SQL metacharacters.
EMAIL_LOCALS = ["x'--", "admin'--", "o'reilly", "a'or'1'='1", "%27--", "1'='1"]
# Usernames the pattern allows that look like SQL: stored verbatim, not rejected.
SQLISH_USERNAMES = ["admin--", "drop_table_users", "1.or.1", "select-1"]
MAX_SECONDS = 2.0
PASSWORD_MIN = 8


# --- helpers ------------------------------------------------------------------------------------


class Sweep:
    """Sends requests, times each, and counts what the accepted ones should have written."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.users = 0
        self.posts = 0
        self.events = 0
        self.requests = 0

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = getattr(self.client, method)(path, **kwargs)
        elapsed = time.perf_counter() - started
        self.requests += 1
        assert elapsed < MAX_SECONDS, (method, path, kwargs, elapsed)
        assert response.status_code < 500, (method, path, response.get_data(as_text=True))
        return response

    def created(self, response: Any, kind: str) -> dict[str, Any]:
        assert response.status_code == 201, response.get_json()
        self.events += 1
        if kind == "user":
            self.users += 1
        else:
            self.posts += 1
        return response.json["data"]

    def updated(self, response: Any, before: int) -> dict[str, Any]:
        assert response.status_code == 200, response.get_json()
        data = response.json["data"]
        self.events += data["version"] - before  # a write that changed something: one event
        return data


def rejected(response: Any, field: str, status: int = 400, code: str = "VALIDATION_ERROR") -> None:
    error = assert_error(response, status, code)
    if status == 400:
        fields = {d["field"] for d in error.get("details", [])}
        assert field in fields or any(f.endswith(f".{field}") for f in fields), (field, error)


@pytest.fixture
def sweep(client: FlaskClient) -> Sweep:
    return Sweep(client)


@pytest.fixture
def schema(app: Flask) -> Callable[[], dict[str, list[str]]]:
    """Every table with its columns: the schema a DROP or ALTER would change."""

    def read() -> dict[str, list[str]]:
        with app.app_context():
            inspector = sa.inspect(db.engine)
            result = {
                table: sorted(c["name"] for c in inspector.get_columns(table))
                for table in inspector.get_table_names()
            }
            db.session.remove()
            return result

    return read


@pytest.fixture
def intact(
    schema: Callable[[], dict[str, list[str]]], row_counts: Callable[[], dict[str, int]]
) -> Callable[..., None]:
    """Call with the sweep and the row counts taken before it: checks tables and counts."""
    tables_before = schema()
    assert set(TABLES) <= set(tables_before)

    def check(sweep: Sweep, before: dict[str, int], **exact: int) -> None:
        assert schema() == tables_before
        after = row_counts()
        assert after["users"] == before["users"] + sweep.users
        assert after["posts"] == before["posts"] + sweep.posts
        assert after["events"] == before["events"] + sweep.events
        assert after["revoked_tokens"] == before["revoked_tokens"] + exact.get("revoked", 0)
        assert sweep.requests > 0

    return check


def fresh_name() -> str:
    return unique("inj")


def login_response(sweep: Sweep, email: str, password: str, *, address: str = "127.0.0.1") -> Any:
    return sweep.call(
        "post",
        "/api/auth/login",
        json={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


def valid_username(value: str) -> bool:
    return bool(re.fullmatch(USERNAME_RE, value)) and 3 <= len(value) <= 32


# --- user bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_create_text_fields_store_payloads_verbatim(sweep, intact, row_counts, payload):
    before = row_counts()
    name = fresh_name()
    body = {
        "email": f"{name}@example.com",
        "username": name,
        "password": PASSWORD,
        "display_name": payload,
        "bio": payload,
    }
    user = sweep.created(sweep.call("post", "/api/users", json=body), "user")
    assert (user["display_name"], user["bio"]) == (payload, payload)

    read = sweep.call("get", f"/api/users/{user['id']}")
    assert (read.json["data"]["display_name"], read.json["data"]["bio"]) == (payload, payload)
    listed = sweep.call("get", "/api/users?per_page=100").json["data"]
    assert [u["bio"] for u in listed if u["id"] == user["id"]] == [payload]
    intact(sweep, before)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_password_is_a_payload(sweep, intact, row_counts, payload):
    before = row_counts()
    name = fresh_name()
    email = f"{name}@example.com"
    response = sweep.call(
        "post", "/api/users", json={"email": email, "username": name, "password": payload}
    )
    if len(payload) < PASSWORD_MIN:
        rejected(response, "password")
        intact(sweep, before)
        return
    sweep.created(response, "user")

    assert login_response(sweep, email, payload).status_code == 200
    for wrong in ("' OR '1'='1", "' OR 1=1 --", payload + "'", payload.upper()):
        if wrong != payload:
            assert_error(login_response(sweep, email, wrong), 401, "UNAUTHENTICATED")
    intact(sweep, before)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_username_payloads_are_rejected_unless_the_pattern_allows_them(
    sweep, intact, row_counts, payload
):
    before = row_counts()
    name = fresh_name()
    response = sweep.call(
        "post",
        "/api/users",
        json={"email": f"{name}@example.com", "username": payload, "password": PASSWORD},
    )
    assert not valid_username(payload)
    rejected(response, "username")
    intact(sweep, before)


@pytest.mark.parametrize("username", SQLISH_USERNAMES)
def test_sql_looking_usernames_the_pattern_allows_are_stored_verbatim(
    sweep, intact, row_counts, username
):
    before = row_counts()
    name = fresh_name()
    username = f"{username}{name[-6:]}"
    response = sweep.call(
        "post",
        "/api/users",
        json={"email": f"{name}@example.com", "username": username, "password": PASSWORD},
    )
    user = sweep.created(response, "user")
    assert sweep.call("get", f"/api/users/{user['id']}").json["data"]["username"] == username
    intact(sweep, before)


def _email_variants(payload: str) -> list[str]:
    return [f"{payload}@example.com", f"x{payload}x@example.com", payload]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_email_payloads_are_stored_verbatim_or_rejected(sweep, intact, row_counts, payload):
    before = row_counts()
    for email in _email_variants(payload):
        name = fresh_name()
        response = sweep.call(
            "post", "/api/users", json={"email": email, "username": name, "password": PASSWORD}
        )
        if response.status_code == 400:
            rejected(response, "email")
            continue
        user = sweep.created(response, "user")
        assert user["email"] == email.lower()
        # The stored address is matched exactly: logging in with it finds this user only.
        tokens = login_response(sweep, email, PASSWORD)
        assert tokens.status_code == 200
        me = sweep.call("get", "/api/me", headers=bearer(tokens.json["data"]["access_token"]))
        assert (me.json["data"]["id"], me.json["data"]["email"]) == (user["id"], email.lower())
    intact(sweep, before)


@pytest.mark.parametrize("local", EMAIL_LOCALS)
def test_emails_with_quotes_and_dashes_are_accepted_and_stored_verbatim(
    sweep, intact, row_counts, local
):
    before = row_counts()
    name = fresh_name()
    email = f"{local}{name[-6:]}@example.com"
    user = sweep.created(
        sweep.call(
            "post", "/api/users", json={"email": email, "username": name, "password": PASSWORD}
        ),
        "user",
    )
    assert user["email"] == email.lower()
    tokens = login_response(sweep, email, PASSWORD)
    assert tokens.status_code == 200
    # The same address with an injection appended is another (unknown) address.
    assert_error(login_response(sweep, email + "' --", PASSWORD), 401, "UNAUTHENTICATED")
    assert_error(login_response(sweep, f"{local}' OR '1'='1", PASSWORD), 401, "UNAUTHENTICATED")
    intact(sweep, before)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_user_put_and_patch_fields(sweep, intact, row_counts, make_account, payload):
    account: Account = make_account()
    before = row_counts()
    item = f"/api/users/{account.id}"
    version = account.user["version"]
    base = {
        "email": account.email,
        "username": account.user["username"],
        "display_name": "Plain",
        "bio": "Plain",
    }

    put = sweep.call(
        "put",
        item,
        json={**base, "display_name": payload, "bio": payload},
        headers=account.headers,
    )
    data = sweep.updated(put, version)
    version = data["version"]
    assert (data["display_name"], data["bio"]) == (payload, payload)

    for field in ("display_name", "bio"):
        value = f"{field}:{payload}"
        patched = sweep.updated(
            sweep.call("patch", item, json={field: value}, headers=account.headers), version
        )
        version = patched["version"]
        assert patched[field] == value
        read = sweep.call("get", item, headers=account.headers).json["data"]
        assert read[field] == value

    for method, body in (("put", {**base, "username": payload}), ("patch", {"username": payload})):
        rejected(sweep.call(method, item, json=body, headers=account.headers), "username")

    for email in _email_variants(payload):
        for method, body in (("put", {**base, "email": email}), ("patch", {"email": email})):
            response = sweep.call(method, item, json=body, headers=account.headers)
            if response.status_code == 400:
                rejected(response, "email")
                continue
            data = sweep.updated(response, version)
            version = data["version"]
            assert data["email"] == email.lower()
            base["email"] = email.lower()

    assert sweep.call("get", item, headers=account.headers).json["data"]["version"] == version
    intact(sweep, before)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_password_change_with_payloads(sweep, intact, row_counts, make_account, payload):
    account: Account = make_account()
    before = row_counts()
    item = f"/api/users/{account.id}"
    version = account.user["version"]

    wrong_current = sweep.call(
        "patch",
        item,
        json={"password": "a new password", "current_password": payload},
        headers=account.headers,
    )
    assert_error(wrong_current, 403, "FORBIDDEN")

    response = sweep.call(
        "patch",
        item,
        json={"password": payload, "current_password": PASSWORD},
        headers=account.headers,
    )
    if len(payload) < PASSWORD_MIN:
        rejected(response, "password")
    else:
        sweep.updated(response, version)
        assert login_response(sweep, account.email, payload).status_code == 200
        assert_error(login_response(sweep, account.email, PASSWORD), 401, "UNAUTHENTICATED")
    # A password change may revoke the account's other tokens: count no revocation rows.
    after = row_counts()
    assert after["revoked_tokens"] >= before["revoked_tokens"]
    intact(sweep, before, revoked=after["revoked_tokens"] - before["revoked_tokens"])


# --- login --------------------------------------------------------------------------------------


def test_login_with_payloads_never_authenticates(sweep, intact, row_counts, make_account):
    victim: Account = make_account()
    before = row_counts()
    attempt = 0
    for payload in PAYLOADS:
        for email, password in (
            (payload, payload),
            (payload, PASSWORD),
            (victim.email, payload),
            (victim.email + payload, PASSWORD),
            (f"{payload}@example.com", PASSWORD),
        ):
            attempt += 1
            # One address per attempt: the per-(account, address) login throttle must not turn
            # the later payloads into 429s before they reach the password check.
            response = login_response(sweep, email, password, address=f"198.51.100.{attempt}")
            assert_error(response, 401, "UNAUTHENTICATED")
            assert "access_token" not in response.get_data(as_text=True)
    intact(sweep, before)


# --- post bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_post_fields(sweep, intact, row_counts, make_account, payload):
    account: Account = make_account()
    before = row_counts()
    create = sweep.call(
        "post",
        f"/api/users/{account.id}/posts",
        json={"title": payload, "body": payload, "status": "published"},
        headers=account.headers,
    )
    post = sweep.created(create, "post")
    item = f"/api/posts/{post['id']}"
    version = post["version"]
    assert (post["title"], post["body"]) == (payload, payload)
    read = sweep.call("get", item).json["data"]
    assert (read["title"], read["body"]) == (payload, payload)
    listed = sweep.call("get", "/api/posts?per_page=100").json["data"]
    assert [p["title"] for p in listed if p["id"] == post["id"]] == [payload]

    put = sweep.call(
        "put",
        item,
        json={"title": f"t {payload}", "body": f"b {payload}", "status": "draft"},
        headers=account.headers,
    )
    data = sweep.updated(put, version)
    version = data["version"]
    assert (data["title"], data["body"]) == (f"t {payload}", f"b {payload}")

    for field in ("title", "body"):
        value = f"{payload} ({field})"
        data = sweep.updated(
            sweep.call("patch", item, json={field: value}, headers=account.headers), version
        )
        version = data["version"]
        read = sweep.call("get", item, headers=account.headers).json["data"]
        assert read[field] == value

    # status is an enum: a payload there is refused, on every write.
    for method, path, body in (
        ("post", f"/api/users/{account.id}/posts", {"title": "x", "status": payload}),
        ("put", item, {"title": "x", "body": "x", "status": payload}),
        ("patch", item, {"status": payload}),
    ):
        rejected(sweep.call(method, path, json=body, headers=account.headers), "status")

    intact(sweep, before)


# --- query parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["page", "per_page", "cursor"])
def test_list_query_parameters(sweep, intact, row_counts, account, param):
    post = account.post_as("Listed", status="published")
    before = row_counts()
    lists = ["/api/users", "/api/posts", f"/api/users/{account.id}/posts"]
    for path in lists:
        baseline = sweep.call("get", path, headers=account.headers).get_json()
        for payload in PAYLOADS:
            for value in (payload, f"1{payload}", f"1 {payload}"):
                query = urlencode({param: value})
                response = sweep.call("get", f"{path}?{query}", headers=account.headers)
                rejected(response, param)
        # Parameters the lists do not take are ignored, whatever they hold.
        noise = urlencode({"q": PAYLOADS[0], "sort": PAYLOADS[1], "status": PAYLOADS[3]})
        ignored = sweep.call("get", f"{path}?{noise}", headers=account.headers)
        assert ignored.status_code == 200
        assert ignored.get_json()["data"] == baseline["data"]
    assert post["id"] in {p["id"] for p in sweep.call("get", "/api/posts").json["data"]}
    intact(sweep, before)


# --- path segments ------------------------------------------------------------------------------


ITEM_ROUTES = [
    ("/api/users/{}", ("get", "put", "patch", "delete")),
    ("/api/users/{}/posts", ("get", "post")),
    ("/api/posts/{}", ("get", "put", "patch", "delete")),
]


def _segments(payload: str) -> Iterator[str]:
    yield quote(payload, safe="")
    yield quote(f"{uuid.uuid4()}{payload}", safe="")
    yield quote(f"{uuid.uuid4()}' OR '1'='1", safe="")


def test_path_segments(sweep, intact, row_counts, account):
    before = row_counts()
    for payload in PAYLOADS:
        for template, methods in ITEM_ROUTES:
            for segment in _segments(payload):
                for method in methods:
                    kwargs: dict[str, Any] = {"headers": account.headers}
                    if method in ("put", "patch", "post"):
                        kwargs["json"] = {"title": "x", "display_name": "x"}
                    response = sweep.call(method, template.format(segment), **kwargs)
                    assert_error(response, 404, "NOT_FOUND")
    # The account and its data are untouched.
    assert sweep.call("get", f"/api/users/{account.id}").status_code == 200
    intact(sweep, before)


# --- headers ------------------------------------------------------------------------------------


def test_conditional_and_auth_headers(sweep, intact, row_counts, account):
    post = account.post_as("Guarded", status="published")
    item = f"/api/posts/{post['id']}"
    before = row_counts()
    for payload in PAYLOADS:
        refused = sweep.call(
            "patch",
            item,
            json={"title": "changed"},
            headers={**account.headers, "If-Match": payload},
        )
        assert_error(refused, 412, "PRECONDITION_FAILED")
        quoted = sweep.call(
            "patch",
            item,
            json={"title": "changed"},
            headers={**account.headers, "If-Match": f'"v1{payload}"'},
        )
        assert_error(quoted, 412, "PRECONDITION_FAILED")
        assert sweep.call("get", item, headers={"If-None-Match": payload}).status_code == 200
        bad_token = sweep.call("get", "/api/me", headers={"Authorization": f"Bearer {payload}"})
        assert_error(bad_token, 401, "UNAUTHENTICATED")
        echoed = sweep.call("get", "/api/posts", headers={"X-Request-ID": payload})
        assert echoed.headers["X-Request-ID"] != payload
    assert sweep.call("get", item).json["data"]["title"] == "Guarded"
    intact(sweep, before)
