"""HTTP conventions (contract §2): envelopes, media types, body limits, request ids, timestamps,
public ids, 500s that leak nothing, and the OpenAPI document."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from tests.factories import UNKNOWN_ID, unique
from tests.support.assertions import assert_error
from tests.support.exchange import MIB, exchange

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
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
}
# The only integers a response may carry, by key: never an internal row id.
INTEGER_KEYS = {"version", "page", "per_page", "total", "expires_in"}


# Errors ----------------------------------------------------------------------------------------


def test_every_status_has_its_envelope(client, account, other):
    for name, status, response in exchange(client, account, other, {}):
        if status >= 400:
            assert_error(response, status, ERROR_CODES[status])
        else:
            assert response.status_code == status, (name, response.get_data(as_text=True))


@pytest.mark.parametrize(
    "path",
    [
        "/api/nope",
        "/nope",
        "/api",
        "/api/posts/",
        "/api/posts/not-a-uuid",
        "/api/posts/12",
        "/api/users/1",
        f"/api/users/{UNKNOWN_ID}",
        f"/api/users/{UNKNOWN_ID}/posts",
        "/api/users/00000000-0000-0000-0000-00000000000g",
        "/api/users/%00",
        "/api/../etc/passwd",
    ],
)
def test_unknown_route_or_id_is_404(client, path):
    response = client.get(path)
    assert_error(response, 404, "NOT_FOUND")
    assert REQUEST_ID_RE.match(response.headers["X-Request-ID"])


def test_unknown_route_with_a_body_is_404(client, account, row_counts):
    before = row_counts()
    for kwargs in ({"json": {"title": "x"}}, {"data": "x", "content_type": "text/plain"}):
        response = client.post("/api/nope", headers=account.headers, **kwargs)
        assert_error(response, 404, "NOT_FOUND")
    assert row_counts() == before


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/api/posts", {"GET"}),
        ("post", "/api/posts", {"GET"}),
        ("put", "/api/users", {"GET", "POST"}),
        ("post", "/api/posts/{post}", {"GET", "PUT", "PATCH", "DELETE"}),
        ("post", "/api/users/{user}", {"GET", "PUT", "PATCH", "DELETE"}),
        ("delete", "/api/users/{user}/posts", {"GET", "POST"}),
        ("delete", "/api/me", {"GET"}),
        ("get", "/api/auth/login", {"POST"}),
        ("put", "/api/auth/logout", {"POST"}),
    ],
)
@pytest.mark.parametrize(
    "body",
    [None, {"json": {"title": "x"}}, {"data": "x", "content_type": "text/plain"}],
    ids=["no-body", "json", "text"],
)
def test_wrong_method_is_405_with_allow(client, account, method, path, allowed, body, row_counts):
    post = account.post_as("A post", status="published")
    path = path.format(post=post["id"], user=account.id)
    before = row_counts()

    response = getattr(client, method)(path, headers=account.headers, **(body or {}))

    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed <= allow
    assert method.upper() not in allow
    assert row_counts() == before


WRITES: list[tuple[str, str]] = [
    ("post", "/api/users"),
    ("post", "/api/users/{user}/posts"),
    ("put", "/api/posts/{post}"),
    ("patch", "/api/posts/{post}"),
    ("put", "/api/users/{user}"),
    ("patch", "/api/users/{user}"),
    ("post", "/api/auth/login"),
]


def _valid_body(method: str, path: str, account) -> dict[str, Any]:
    if path == "/api/users":
        return {"email": f"{unique()}@example.com", "username": unique(), "password": "long enough"}
    if path == "/api/auth/login":
        return {"email": account.email, "password": "correct horse battery"}
    if path.startswith("/api/users/{user}") and not path.endswith("/posts"):
        return {"display_name": "New name", "bio": "", "email": account.email, "username": unique()}
    return {"title": "New", "body": "b", "status": "draft"}


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "text/json",
        "application/jsonp",
        None,
    ],
)
def test_non_json_body_is_415(client, account, method, path, content_type, row_counts):
    post = account.post_as("A post")
    url = path.format(user=account.id, post=post["id"])
    payload = json.dumps(_valid_body(method, path, account))
    before = row_counts()

    kwargs: dict[str, Any] = {"data": payload, "headers": account.headers}
    if content_type:
        kwargs["content_type"] = content_type
    response = getattr(client, method)(url, **kwargs)

    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert row_counts() == before


def test_form_and_multipart_bodies_are_415(client, account, row_counts):
    before = row_counts()
    url = f"/api/users/{account.id}/posts"
    form = client.post(url, data={"title": "x"}, headers=account.headers)
    multipart = client.post(
        url,
        data={"title": "x", "file": (io.BytesIO(b"data"), "a.txt")},
        headers=account.headers,
        content_type="multipart/form-data",
    )
    assert_error(form, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_error(multipart, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert row_counts() == before


def test_json_with_a_charset_is_accepted(client, account):
    response = client.post(
        f"/api/users/{account.id}/posts",
        data=json.dumps({"title": "Charset"}),
        content_type="application/json; charset=utf-8",
        headers=account.headers,
    )
    assert response.status_code == 201, response.json


@pytest.mark.parametrize(("method", "path"), WRITES)
@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b'{"title": }',
        b"{'title': 'single quotes'}",
        b'{"title": "x",}',
        b'{"title": "unterminated',
        b"\xff\xfe\x00",
        b"title=x",
        b"[1, 2",
    ],
    ids=lambda p: p.decode(errors="replace")[:16],
)
def test_invalid_json_is_400(client, account, method, path, payload, row_counts):
    post = account.post_as("A post")
    url = path.format(user=account.id, post=post["id"])
    before = row_counts()

    response = getattr(client, method)(
        url, data=payload, content_type="application/json", headers=account.headers
    )

    assert_error(response, 400, "VALIDATION_ERROR")
    assert row_counts() == before


# Body size -------------------------------------------------------------------------------------


def test_the_body_limit_is_one_mebibyte(app):
    assert app.config["MAX_CONTENT_LENGTH"] == MIB


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_body_over_the_limit_is_413(client, account, method, path, row_counts):
    post = account.post_as("A post")
    url = path.format(user=account.id, post=post["id"])
    body = {**_valid_body(method, path, account), "padding": "x" * MIB}
    before = row_counts()

    response = getattr(client, method)(url, json=body, headers=account.headers)

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert REQUEST_ID_RE.match(response.headers["X-Request-ID"])
    assert row_counts() == before


def test_body_just_over_the_limit_is_413_and_at_the_limit_is_not(client, account, row_counts):
    url = f"/api/users/{account.id}/posts"
    before = row_counts()

    def sized(size: int) -> bytes:
        head = b'{"title": "Sized", "body": "'
        tail = b'"}'
        data = head + b"x" * (size - len(head) - len(tail)) + tail
        assert len(data) == size
        return data

    over = client.post(
        url, data=sized(MIB + 1), content_type="application/json", headers=account.headers
    )
    assert_error(over, 413, "PAYLOAD_TOO_LARGE")
    at = client.post(url, data=sized(MIB), content_type="application/json", headers=account.headers)
    # Not too large for the server; too long for a post body (100 000 characters).
    error = assert_error(at, 400, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == {"body"}
    assert row_counts() == before


def _chunked(client, url: str, data: bytes, headers: dict[str, str]) -> Any:
    """A body without Content-Length, as a WSGI server passes on a chunked request."""
    return client.post(
        url,
        input_stream=io.BytesIO(data),
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_the_limit_is_413(client, account, row_counts):
    url = f"/api/users/{account.id}/posts"
    before = row_counts()

    big = json.dumps({"title": "Chunked", "body": "x" * (2 * MIB)}).encode()
    response = _chunked(client, url, big, account.headers)

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert row_counts() == before
    small = _chunked(client, url, json.dumps({"title": "Chunked"}).encode(), account.headers)
    assert small.status_code == 201, small.json
    assert small.json["data"]["title"] == "Chunked"


# Request ids -----------------------------------------------------------------------------------


def test_every_response_carries_a_fresh_request_id(client, account, other):
    seen = set()
    for name, status, response in exchange(client, account, other, {}):
        assert response.status_code == status, name
        request_id = response.headers.get("X-Request-ID")
        assert request_id, name
        assert REQUEST_ID_RE.match(request_id), (name, request_id)
        seen.add(request_id)
    assert len(seen) == 17


@pytest.mark.parametrize(
    "request_id",
    ["a", "abc-123_X.y", "x" * 128, "0", "...", "---", "550e8400-e29b-41d4-a716-446655440000"],
)
def test_a_valid_client_request_id_is_echoed(client, account, other, request_id):
    for name, status, response in exchange(client, account, other, {"X-Request-ID": request_id}):
        assert response.status_code == status, name
        assert response.headers["X-Request-ID"] == request_id, name


@pytest.mark.parametrize(
    "request_id",
    [
        "x" * 129,
        "has space",
        " leading",
        "café",
        "",
        "a/b",
        "a:b",
        "<script>",
        "id;drop",
        "tab\there",
        "quote'",
    ],
)
def test_an_invalid_client_request_id_is_replaced(client, account, other, request_id):
    for name, status, response in exchange(client, account, other, {"X-Request-ID": request_id}):
        assert response.status_code == status, name
        replaced = response.headers["X-Request-ID"]
        assert replaced != request_id, name
        assert REQUEST_ID_RE.match(replaced), (name, replaced)


# Media types -----------------------------------------------------------------------------------


def test_every_response_is_json_except_204_and_304(client, account, other):
    for name, status, response in exchange(client, account, other, {}):
        assert response.status_code == status, name
        if status in (204, 304):
            assert response.data == b"", name
        else:
            assert response.mimetype == "application/json", (name, response.mimetype)
            assert isinstance(json.loads(response.data), dict), name


# Timestamps and public ids ---------------------------------------------------------------------


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)


def _sample_bodies(client, account, admin) -> list[dict[str, Any]]:
    post = account.post_as("Published", status="published")
    draft = account.post_as("Draft")
    return [
        client.post(
            "/api/users",
            json={"email": f"{unique()}@example.com", "username": unique(), "password": "12345678"},
        ).json,
        client.get(f"/api/users/{account.id}").json,
        client.get(f"/api/users/{account.id}", headers=admin.headers).json,
        client.get("/api/users").json,
        client.get("/api/me", headers=account.headers).json,
        client.get(f"/api/posts/{post['id']}").json,
        client.get(f"/api/posts/{draft['id']}", headers=account.headers).json,
        client.get("/api/posts").json,
        client.get(f"/api/users/{account.id}/posts", headers=account.headers).json,
        client.patch(
            f"/api/posts/{post['id']}", json={"title": "Edited"}, headers=account.headers
        ).json,
        client.patch(
            f"/api/users/{account.id}", json={"bio": "Edited"}, headers=account.headers
        ).json,
        client.post("/api/auth/login", json={"email": account.email, "password": "wrong"}).json,
        client.post(
            "/api/auth/login", json={"email": account.email, "password": "correct horse battery"}
        ).json,
    ]


def test_timestamps_are_iso8601_utc(client, account, admin):
    checked = 0
    for body in _sample_bodies(client, account, admin):
        for key, value in _walk(body):
            if key.endswith("_at") and value is not None:
                parsed = datetime.fromisoformat(value)
                assert parsed.utcoffset() == timedelta(0), (key, value)
                assert value.endswith("+00:00"), (key, value)
                assert "T" in value, (key, value)
                checked += 1
    assert checked >= 25


def test_no_internal_integer_ids_in_responses(client, account, admin):
    uuids = 0
    for body in _sample_bodies(client, account, admin):
        for key, value in _walk(body):
            if key == "id" or key.endswith("_id"):
                assert isinstance(value, str), (key, value, body)
                assert str(uuid.UUID(value)) == value, (key, value)
                uuids += 1
            if isinstance(value, int) and not isinstance(value, bool):
                assert key in INTEGER_KEYS, (key, value, body)
    assert uuids >= 15


def test_author_id_is_the_authors_uuid(client, account, admin, app):
    post = account.post_as("Mine", status="published")
    assert post["author_id"] == account.id
    with app.app_context():
        internal = db.session.execute(
            sa.text("SELECT id FROM users WHERE username = :u"), {"u": account.user["username"]}
        ).scalar_one()
        db.session.remove()
    listed = client.get("/api/posts").json["data"][0]
    assert listed["author_id"] == account.id
    assert listed["author_id"] != str(internal)
    assert client.get(f"/api/users/{listed['author_id']}").json["data"]["id"] == account.id


def test_location_headers_use_public_ids(client, account):
    user = client.post(
        "/api/users",
        json={"email": f"{unique()}@example.com", "username": unique(), "password": "12345678"},
    )
    post = client.post(
        f"/api/users/{account.id}/posts", json={"title": "x"}, headers=account.headers
    )
    assert user.headers["Location"].endswith(f"/api/users/{user.json['data']['id']}")
    assert post.headers["Location"].endswith(f"/api/posts/{post.json['data']['id']}")


# 500 -------------------------------------------------------------------------------------------


@pytest.fixture
def failing_app(app: Flask) -> Iterator[Flask]:
    """A fresh app on the same database with routes that fail the way real bugs do."""
    from app import create_app
    from tests.support.backends import test_config

    fresh = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"]))

    def crash() -> Any:
        raise RuntimeError("Traceback (most recent call last): password_hash=secret-value")

    def bad_sql() -> Any:
        db.session.execute(sa.text("SELECT password_hash FROM no_such_table_xyz"))
        return {"data": None}

    def bad_key() -> Any:
        return {}["missing_key_in_internal_code"]

    fresh.add_url_rule("/api/test-crash", "test_crash", crash, methods=["GET", "POST"])
    fresh.add_url_rule("/api/test-sql", "test_sql", bad_sql)
    fresh.add_url_rule("/api/test-key", "test_key", bad_key)
    yield fresh
    with fresh.app_context():
        db.session.remove()
        db.engine.dispose()


LEAKS = (
    "Traceback",
    "password_hash",
    "secret-value",
    "SELECT",
    "no_such_table",
    "sqlalchemy",
    "RuntimeError",
    "missing_key",
    "KeyError",
    'File "',
    ".py",
)


@pytest.mark.parametrize("path", ["/api/test-crash", "/api/test-sql", "/api/test-key"])
def test_a_500_leaks_nothing(failing_app: Flask, path: str):
    client = failing_app.test_client()

    response = client.get(path, headers={"X-Request-ID": "trace-me-500"})

    error = assert_error(response, 500, "INTERNAL_ERROR")
    text = response.get_data(as_text=True)
    for leak in LEAKS:
        assert leak not in text, leak
    assert "details" not in error
    assert response.headers["X-Request-ID"] == "trace-me-500"
    # The app keeps serving afterwards.
    assert client.get("/api/posts").status_code == 200


def test_a_500_on_a_write_leaks_nothing(failing_app: Flask):
    response = failing_app.test_client().post("/api/test-crash", json={"a": 1})
    assert_error(response, 500, "INTERNAL_ERROR")
    assert REQUEST_ID_RE.match(response.headers["X-Request-ID"])
    assert "secret-value" not in response.get_data(as_text=True)


# OpenAPI ---------------------------------------------------------------------------------------

CONTRACT_OPERATIONS = {
    "/api/users": {"get", "post"},
    "/api/users/{}": {"get", "put", "patch", "delete"},
    "/api/users/{}/posts": {"get", "post"},
    "/api/posts": {"get"},
    "/api/posts/{}": {"get", "put", "patch", "delete"},
    "/api/me": {"get"},
    "/api/auth/login": {"post"},
    "/api/auth/refresh": {"post"},
    "/api/auth/logout": {"post"},
}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def test_openapi_document_covers_the_contract(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    operations: dict[str, set[str]] = {}
    for path, item in spec["paths"].items():
        normalised = re.sub(r"\{[^}]+\}", "{}", path)
        operations.setdefault(normalised, set()).update(set(item) & HTTP_METHODS)
    for path, methods in CONTRACT_OPERATIONS.items():
        assert path in operations, path
        assert methods <= operations[path], (path, operations[path])


def test_openapi_document_is_valid(client):
    from openapi_spec_validator import validate

    validate(client.get("/api/openapi.json").get_json())


def test_openapi_documents_errors_with_the_envelope(client):
    spec = client.get("/api/openapi.json").get_json()
    post_create = spec["paths"]["/api/users/{user_id}/posts"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "413", "415"} <= set(post_create)
    dumped = json.dumps(spec)
    assert "METHOD_NOT_ALLOWED" in dumped or "ErrorEnvelope" in dumped


def test_docs_page_is_html(client):
    response = client.get("/api/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "openapi.json" in page
    for asset in re.findall(r'(?:src|href)="(/api/docs/static/[^"]+)"', page):
        assert client.get(asset).status_code == 200, asset


# The exchange helper really covers every status, so the loops above check what they claim.


def test_exchange_covers_every_status(client, account, other):
    statuses = sorted({status for _, status, _ in exchange(client, account, other, {})})
    assert statuses == [200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415]


def test_overlong_uri_is_414_envelope(client):
    response = client.get("/api/posts?" + "per_page=1&" * 1000)
    error = assert_error(response, 414, "URI_TOO_LONG")
    assert "8192" in error["message"]
    assert response.headers["X-Request-ID"]
