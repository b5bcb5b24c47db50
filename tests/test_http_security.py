"""HTTP hardening: CORS, OPTIONS, security headers, CSP (JSON and the docs page), HSTS,
Cache-Control on auth responses, and compression that leaves ETags and conditional requests alone.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.core.http_security import CORS_ALLOW_HEADERS, CORS_EXPOSE_HEADERS, JSON_CSP
from app.settings import ConfigError
from tests.conftest import PASSWORD, assert_error, bearer, register, test_config, unique
from tests.test_http_conventions import exchange

ALLOWED = "https://app.example"
ALLOWED_LOCAL = "http://localhost:3000"
STRONG = {"SECRET_KEY": "x" * 48, "JWT_SECRET_KEY": "y" * 48}
MIB = 1024 * 1024


# --- apps ---------------------------------------------------------------------------------------


@pytest.fixture
def make_client(app: Flask, database_uri: str) -> Iterator[Callable[..., FlaskClient]]:
    """A client of a new app on the test database (migrated by `app`), with config overrides.

    Apps outside testing set up JSON logging on the root logger: it is put back afterwards.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def make(**overrides: Any) -> FlaskClient:
        return create_app(test_config(database_uri, **overrides)).test_client()

    yield make
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def cors_client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(CORS_ORIGINS=[ALLOWED, ALLOWED_LOCAL])


@pytest.fixture
def production(make_client: Callable[..., FlaskClient]) -> Callable[..., FlaskClient]:
    def make(**overrides: Any) -> FlaskClient:
        return make_client(APP_ENV="production", RATELIMIT_ENABLED=False, **STRONG, **overrides)

    return make


@pytest.fixture
def other(make_account):
    return make_account()


def listed(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def access_control(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def vary(response: Any) -> set[str]:
    return {v.strip().lower() for v in response.headers.get("Vary", "").split(",") if v.strip()}


# --- CORS ---------------------------------------------------------------------------------------


def test_no_origin_is_allowed_by_default(client, make_client):
    assert client.application.config["CORS_ORIGINS"] == []  # unless the environment says so
    client = make_client(CORS_ORIGINS=[])
    simple = client.get("/api/users", headers={"Origin": ALLOWED})
    preflight = client.options(
        "/api/users",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert simple.status_code == 200
    assert access_control(simple) == {}
    assert preflight.status_code == 204
    assert access_control(preflight) == {}


def test_allowed_origin_gets_cors_headers(cors_client):
    response = cors_client.get("/api/users", headers={"Origin": ALLOWED})

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert len(response.headers.getlist("Access-Control-Allow-Origin")) == 1
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == set(CORS_EXPOSE_HEADERS)
    assert {
        "ETag",
        "Location",
        "Link",
        "X-Request-ID",
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    } <= exposed
    assert "Access-Control-Allow-Credentials" not in response.headers  # bearer tokens, no cookies
    assert "origin" in vary(response)
    assert len(response.headers.getlist("Vary")) == 1  # one merged header


def test_second_allowed_origin_gets_its_own_origin_back(cors_client):
    response = cors_client.get("/api/posts", headers={"Origin": ALLOWED_LOCAL})
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_LOCAL


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",  # another scheme
        "https://app.example:8443",  # another port
        "https://app.example.evil.example",  # the allowed one as a prefix
        "https://sub.app.example",
        "https://app.exampl",
        "null",
        "*",
    ],
)
def test_other_origins_get_no_cors_headers(cors_client, origin):
    simple = cors_client.get("/api/users", headers={"Origin": origin})
    preflight = cors_client.options(
        "/api/users",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )

    assert simple.status_code == 200
    assert access_control(simple) == {}
    assert "origin" in vary(simple)  # a cache must not replay this answer to an allowed origin
    assert preflight.status_code == 204
    assert access_control(preflight) == {}


def test_no_origin_header_no_cors_headers(cors_client):
    # flask-cors would otherwise list every allowed origin on a request without Origin.
    response = cors_client.get("/api/users")
    assert access_control(response) == {}


def test_preflight_for_an_allowed_origin(cors_client):
    requested = (
        "authorization, content-type, if-match, if-none-match, idempotency-key, x-request-id"
    )
    response = cors_client.options(
        f"/api/users/{uuid.uuid4()}",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": requested,
        },
    )

    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    allowed = listed(response.headers["Access-Control-Allow-Headers"])
    assert allowed == {h.lower() for h in CORS_ALLOW_HEADERS}
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {
        "GET",
        "HEAD",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
    }


def test_preflight_does_not_allow_other_request_headers(cors_client):
    response = cors_client.options(
        "/api/users",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-evil, cookie",
        },
    )

    allowed = listed(response.headers["Access-Control-Allow-Headers"])
    assert allowed == {"content-type"}  # the browser then refuses to send x-evil


def test_preflight_does_not_allow_other_methods(cors_client):
    response = cors_client.options(
        "/api/users", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "TRACE"}
    )
    assert "Access-Control-Allow-Methods" not in response.headers


def test_cors_is_only_on_api_routes(cors_client):
    for path in ("/health", "/ready"):
        response = cors_client.get(path, headers={"Origin": ALLOWED})
        assert "Access-Control-Allow-Origin" not in response.headers, path


def test_cross_origin_create_exposes_location_and_errors_carry_cors(cors_client):
    name = unique()
    created = cors_client.post(
        "/api/users",
        json={"email": f"{name}@example.com", "username": name, "password": PASSWORD},
        headers={"Origin": ALLOWED},
    )
    assert created.status_code == 201
    assert created.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert created.headers["Location"]

    # A browser script can read the error envelope of a cross-origin call too.
    for response in (
        cors_client.get("/api/nope", headers={"Origin": ALLOWED}),
        cors_client.get("/api/me", headers={"Origin": ALLOWED}),
        cors_client.delete("/api/users", headers={"Origin": ALLOWED}),
        cors_client.post("/api/users", data="x", headers={"Origin": ALLOWED}),
    ):
        assert response.status_code >= 400
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert response.mimetype == "application/json"


@pytest.mark.parametrize(
    "origins",
    [
        ["*"],
        ["null"],
        ["https://app.example/"],
        ["https://app.example/path"],
        ["https://*.example.com"],
        ["app.example"],
        ["ftp://app.example"],
        ["https://app.example:0"],
        ["https://app.example:99999"],
        ["https://user@app.example"],
        [ALLOWED, "https://app.example?x=1"],
    ],
)
def test_malformed_cors_origins_refuse_to_start(app, database_uri, origins):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        create_app(test_config(database_uri, CORS_ORIGINS=origins))


def test_cors_origins_are_normalised(make_client):
    client = make_client(CORS_ORIGINS=[" HTTPS://App.Example ", "", "http://127.0.0.1:8080"])
    assert client.application.config["CORS_ORIGINS"] == [ALLOWED, "http://127.0.0.1:8080"]
    response = client.get("/api/users", headers={"Origin": ALLOWED})
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED


# --- OPTIONS ------------------------------------------------------------------------------------


def _concrete(rule: str) -> str:
    """A path the rule matches: a uuid for each id, a well-formed slug for a slug."""

    def sample(match: re.Match[str]) -> str:
        if match.group(0).startswith("<slug:"):
            return "a-post-" + "a" * 26
        return str(uuid.uuid4())

    return re.sub(r"<[^>]+>", sample, rule)


def test_every_options_is_an_empty_204_with_allow(client):
    rules = [r for r in client.application.url_map.iter_rules() if "OPTIONS" in (r.methods or ())]
    assert len(rules) > 10
    for rule in rules:
        path = _concrete(rule.rule)
        response = client.options(path)
        assert response.status_code == 204, path
        assert response.get_data() == b"", path
        assert "Content-Type" not in response.headers, path
        assert "OPTIONS" in response.headers["Allow"], path
        assert response.headers["X-Request-ID"]


def test_options_on_an_unknown_path_is_a_404_envelope(client):
    assert_error(client.options("/api/nope"), 404, "NOT_FOUND")


def test_no_response_is_text_html_except_the_docs_page(client, account, other):
    for name, status, response in exchange(client, account, other, {}):
        assert response.status_code == status, name
        if response.get_data():
            assert response.mimetype == "application/json", name
        else:
            assert "Content-Type" not in response.headers, (name, response.headers)


# --- Security headers ---------------------------------------------------------------------------


def assert_security_headers(response: Any, csp: str = JSON_CSP) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Security-Policy"] == csp
    assert "Strict-Transport-Security" not in response.headers  # not in testing
    assert response.headers.get("Cache-Control")


def test_security_headers_on_every_kind_of_response(client, account, other):
    seen = set()
    for name, status, response in exchange(client, account, other, {}):
        assert response.status_code == status, name
        assert_security_headers(response)
        seen.add(status)
    assert {200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415} <= seen


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/api/users", {}, 200),
        ("get", "/health", {}, 200),
        ("get", "/api/openapi.json", {}, 200),
        ("get", "/api/nope", {}, 404),
        ("get", "/nope", {}, 404),
        ("delete", "/api/users", {}, 405),
        ("post", "/api/users", {"data": "x" * (MIB + 1), "content_type": "application/json"}, 413),
        ("post", "/api/users", {"data": "{}", "content_type": "text/plain"}, 415),
        ("post", "/api/users", {"json": {}}, 400),
        ("get", "/api/me", {}, 401),
        ("options", "/api/users", {}, 204),
        ("head", "/api/users", {}, 200),
    ],
)
def test_security_headers(client, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status
    assert_security_headers(response)
    if status >= 400:
        assert response.headers["Cache-Control"] == "no-store"


def test_security_and_cors_headers_on_a_429(make_client):
    client = make_client(
        RATELIMIT_ENABLED=True,
        RATELIMIT_ANONYMOUS="1/minute",
        REDIS_URL=None,  # this app's own in-memory counters
        CORS_ORIGINS=[ALLOWED],
    )
    client.get("/api/posts", headers={"Origin": ALLOWED})
    response = client.get("/api/posts", headers={"Origin": ALLOWED})

    assert_error(response, 429, "RATE_LIMITED")
    assert_security_headers(response)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = listed(response.headers["Access-Control-Expose-Headers"])
    assert {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= (
        exposed
    )
    assert response.headers["Retry-After"]


def test_security_headers_on_a_500(app, database_uri):
    broken = create_app(test_config(database_uri))

    @broken.get("/api/boom")
    def boom() -> Any:
        raise RuntimeError("select * from users -- secret detail")

    response = broken.test_client().get("/api/boom")

    assert_error(response, 500, "INTERNAL_ERROR")
    assert_security_headers(response)
    assert "secret detail" not in response.get_data(as_text=True)


def test_auth_responses_are_never_stored(client, account):
    login_response = client.post(
        "/api/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    refresh_response = client.post(
        "/api/auth/refresh", headers=bearer(login_response.json["data"]["refresh_token"])
    )
    failed = client.post("/api/auth/login", json={"email": account.email, "password": "wrong!!!"})
    logout = client.post("/api/auth/logout", headers=account.headers)

    for response in (login_response, refresh_response, failed, logout):
        assert response.headers["Cache-Control"] == "no-store"
    assert (login_response.status_code, refresh_response.status_code) == (200, 200)
    assert (failed.status_code, logout.status_code) == (401, 204)


def test_resources_keep_their_own_cache_policy(client, account):
    response = client.get(f"/api/users/{account.id}")
    assert response.headers["Cache-Control"] == "private, no-cache"
    # Lists set none of their own: they are not stored.
    assert client.get("/api/users").headers["Cache-Control"] == "no-store"


# --- CSP: JSON and the docs page -----------------------------------------------------------------


def _directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_docs_page_csp_allows_its_own_assets_and_inline_script_only(client):
    response = client.get("/api/docs")
    page = response.get_data(as_text=True)
    csp = _directives(response.headers["Content-Security-Policy"])

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    inline = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert inline, "flask-smorest's template has an inline script"
    hashes = {
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline
    }
    assert csp["default-src"] == ["'none'"]
    assert set(csp["script-src"]) == {"'self'", *hashes}
    assert csp["style-src"] == ["'self'"]
    assert set(csp["img-src"]) == {"'self'", "data:"}
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    header = response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in header
    assert "unsafe-eval" not in header
    assert "*" not in header
    assert response.headers["X-Frame-Options"] == "DENY"


def test_json_responses_get_the_strict_csp(client):
    for path in ("/api/openapi.json", "/api/users", "/api/docs/static/swagger-ui.css"):
        assert client.get(path).headers["Content-Security-Policy"] == JSON_CSP, path


def test_docs_static_assets_load_with_the_right_types(client):
    page = client.get("/api/docs").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/api/docs/static/[^"]+)"', page)
    assert {a.rsplit(".", 1)[-1] for a in assets} == {"css", "js"}

    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        # nosniff: a browser runs a script or applies a stylesheet only with the right type.
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        expected = "text/css" if asset.endswith(".css") else "javascript"
        assert expected in response.mimetype, (asset, response.mimetype)
        assert len(response.get_data()) > 1000


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs chromium (Debian package)")
def test_docs_page_renders_under_its_csp_in_a_real_browser(server, tmp_path):
    http, _proc = server
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{http.base}/api/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # The operations are in the DOM only if Swagger UI's scripts ran and fetched the spec.
    assert 'id="operations-users-createUser"' in result.stdout, result.stderr[-3000:]
    assert "Content Security Policy" not in result.stderr, result.stderr[-3000:]


# --- HSTS ---------------------------------------------------------------------------------------


def test_no_hsts_outside_production(client, make_client):
    assert "Strict-Transport-Security" not in client.get("/api/users").headers
    development = make_client(APP_ENV="development")
    assert "Strict-Transport-Security" not in development.get("/api/users").headers


def test_hsts_in_production_on_every_response(production):
    client = production()
    for response in (
        client.get("/api/users"),
        client.get("/api/nope"),
        client.get("/api/me"),
        client.options("/api/users"),
        client.get("/api/docs"),
    ):
        assert response.headers["Strict-Transport-Security"] == (
            "max-age=31536000; includeSubDomains"
        )


def test_hsts_max_age_is_configurable(production):
    client = production(HSTS_SECONDS=600)
    assert client.get("/health").headers["Strict-Transport-Security"].startswith("max-age=600;")


def test_negative_hsts_refuses_to_start(app, database_uri):
    with pytest.raises(ConfigError, match="HSTS_SECONDS"):
        create_app(test_config(database_uri, HSTS_SECONDS=-1))


# --- Compression --------------------------------------------------------------------------------


def _decoded(response: Any) -> Any:
    body = response.get_data()
    coding = response.headers.get("Content-Encoding")
    if coding == "gzip":
        body = gzip.decompress(body)
    elif coding == "br":
        body = brotli.decompress(body)
    else:
        assert coding is None, coding
    return json.loads(body)


@pytest.fixture
def many_users(client):
    for _ in range(12):
        register(client, bio="A bio long enough to make the list worth compressing. " * 2)


@pytest.mark.parametrize(
    ("accept", "coding"),
    [("gzip", "gzip"), ("br", "br"), ("gzip, deflate, br", "br"), ("br;q=0.5, gzip", "gzip")],
)
def test_large_lists_are_compressed(client, many_users, accept, coding):
    plain = client.get("/api/users?per_page=100")
    packed = client.get("/api/users?per_page=100", headers={"Accept-Encoding": accept})

    assert len(plain.get_data()) > 1024
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == coding
    assert int(packed.headers["Content-Length"]) == len(packed.get_data())
    assert len(packed.get_data()) < len(plain.get_data()) / 2
    assert _decoded(packed) == plain.get_json()
    assert "accept-encoding" in vary(packed)
    assert packed.mimetype == "application/json"


def test_small_bodies_are_not_compressed(client, account):
    gz = {"Accept-Encoding": "gzip, br"}
    for response in (
        client.get(f"/api/users/{account.id}", headers=gz),
        client.get("/api/nope", headers=gz),
        client.get("/health", headers=gz),
        client.get("/api/users?per_page=1", headers=gz),
    ):
        assert len(response.get_data()) < 1024
        assert "Content-Encoding" not in response.headers


def test_identity_only_client_gets_no_compression(client, many_users):
    for accept in ("identity", "gzip;q=0, br;q=0", ""):
        response = client.get("/api/users?per_page=100", headers={"Accept-Encoding": accept})
        assert "Content-Encoding" not in response.headers, accept


def test_auth_and_non_json_responses_are_never_compressed(make_client, account):
    client = make_client(COMPRESS_MIN_SIZE=1)
    gz = {"Accept-Encoding": "gzip"}

    assert client.get("/health", headers=gz).headers["Content-Encoding"] == "gzip"
    for response in (
        client.post(
            "/api/auth/login", json={"email": account.email, "password": PASSWORD}, headers=gz
        ),
        client.post(
            "/api/auth/login", json={"email": account.email, "password": "nope"}, headers=gz
        ),
        client.get("/api/docs", headers=gz),
        client.get("/api/docs/static/swagger-ui.css", headers=gz),
    ):
        assert "Content-Encoding" not in response.headers, response.request.path


def test_conditional_requests_work_on_compressed_responses(client, account):
    gz = {"Accept-Encoding": "gzip", **account.headers}
    post = account.post_as("Long", body="All work and no play. " * 200, status="published")
    item = f"/api/posts/{post['id']}"

    first = client.get(item, headers=gz)
    assert first.headers["Content-Encoding"] == "gzip"
    etag = first.headers["ETag"]
    assert etag == '"v1"'  # not rewritten to "v1:gzip"
    assert _decoded(first)["data"]["body"] == post["body"]

    not_modified = client.get(item, headers={**gz, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.get_data() == b""
    assert not_modified.headers["ETag"] == etag
    assert "Content-Type" not in not_modified.headers
    assert "accept-encoding" in vary(not_modified)

    # A Range request gets the whole representation, never a slice of the compressed bytes.
    ranged = client.get(item, headers={**gz, "Range": "bytes=0-9"})
    assert ranged.status_code == 200
    assert _decoded(ranged)["data"]["id"] == post["id"]

    updated = client.patch(item, json={"title": "Longer"}, headers={**gz, "If-Match": etag})
    assert updated.status_code == 200
    assert updated.headers["Content-Encoding"] == "gzip"
    assert updated.headers["ETag"] == '"v2"'

    stale = client.patch(item, json={"title": "Lost"}, headers={**gz, "If-Match": etag})
    assert_error(stale, 412, "PRECONDITION_FAILED")

    changed = client.get(item, headers={**gz, "If-None-Match": etag})
    assert changed.status_code == 200
    assert _decoded(changed)["data"]["title"] == "Longer"
    assert client.get(item, headers={**gz, "If-None-Match": '"v2"'}).status_code == 304

    deleted = client.delete(item, headers={**gz, "If-Match": '"v2"'})
    assert deleted.status_code == 204


def test_private_etag_survives_compression(client, account):
    gz = {"Accept-Encoding": "br", **account.headers}
    patched = client.patch(
        f"/api/users/{account.id}", json={"bio": "b" * 1000}, headers=account.headers
    )
    assert patched.status_code == 200

    response = client.get(f"/api/users/{account.id}", headers=gz)
    assert response.headers["Content-Encoding"] == "br"
    assert response.headers["ETag"] == f'"v{patched.json["data"]["version"]}-private"'
    again = client.get(
        f"/api/users/{account.id}", headers={**gz, "If-None-Match": response.headers["ETag"]}
    )
    assert again.status_code == 304
