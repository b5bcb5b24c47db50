"""The apps API, the grants a user sees, the consent page's sign-in, revocation (RFC 7009),
metadata (RFC 8414) and the token endpoint's answers (contract §9)."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.auth.service import BAD_CREDENTIALS
from tests.factories import claims_of
from tests.support.assertions import assert_error
from tests.support.oauth import (
    REDIRECT,
    assert_oauth_error,
    authorize_query,
    bearer,
    csrf_of,
    exchange,
    get_code,
    pkce,
    refresh,
    register_app,
    sign_in,
    tokens,
)

MAX_FAILURES = 5  # LOGIN_ACCOUNT_MAX_FAILURES's default, as in test_auth_hardening


def test_a_public_app_gets_no_secret_and_a_confidential_one_sees_it_once(client, account):
    public = register_app(client, account)
    assert "client_secret" not in public
    confidential = register_app(client, account, confidential=True)
    assert len(confidential["client_secret"]) >= 40
    again = client.get(f"/api/oauth/clients/{confidential['client_id']}", headers=account.headers)
    assert again.status_code == 200
    assert "client_secret" not in again.get_json()["data"]
    listed = client.get("/api/oauth/clients", headers=account.headers).get_json()["data"]
    assert {c["client_id"] for c in listed} == {public["client_id"], confidential["client_id"]}
    assert confidential["owner_id"] == account.id


@pytest.mark.parametrize(
    "uri",
    ["http://app.example.com/cb", "ftp://x/cb", "https://app.example.com/cb#frag",
     "https://user:pw@app.example.com/cb", "http://10.0.0.1/cb", "not a url"],
)  # fmt: skip
def test_redirect_uris_must_be_https_or_loopback(client, account, uri):
    answer = client.post(
        "/api/oauth/clients",
        json={"name": "x", "redirect_uris": [uri], "scopes": ["profile"]},
        headers=account.headers,
    )
    assert assert_error(answer, 400, "VALIDATION_ERROR")["details"][0]["field"] == (
        "redirect_uris.0"
    )


def test_native_apps_may_use_loopback_redirects(client, account):
    made = register_app(
        client, account, redirect_uris=["http://127.0.0.1:8765/cb", "http://localhost/cb"]
    )
    assert made["redirect_uris"] == ["http://127.0.0.1:8765/cb", "http://localhost/cb"]


def test_an_app_may_not_register_the_admin_scope(client, account):
    answer = client.post(
        "/api/oauth/clients",
        json={"name": "x", "redirect_uris": [REDIRECT], "scopes": ["admin"]},
        headers=account.headers,
    )
    assert_error(answer, 400, "VALIDATION_ERROR")


def test_someone_elses_app_is_not_found_and_stays(client, account, other):
    made = register_app(client, account)
    url = f"/api/oauth/clients/{made['client_id']}"
    assert_error(client.get(url, headers=other.headers), 404, "NOT_FOUND")
    assert_error(client.delete(url, headers=other.headers), 404, "NOT_FOUND")
    assert client.get(url, headers=account.headers).status_code == 200


def test_deleting_an_app_ends_every_token_it_holds(client, account, other):
    made = register_app(client, other)
    issued = tokens(client, made, account)
    url = f"/api/oauth/clients/{made['client_id']}"
    assert client.delete(url, headers=other.headers).status_code == 204
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 401
    assert client.get(url, headers=other.headers).status_code == 404


def test_the_app_token_is_our_jwt_with_the_granted_scopes_and_client_id(client, account, other):
    made = register_app(client, other, scopes=["profile", "drafts:read"])
    issued = tokens(client, made, account)
    assert issued["token_type"] == "Bearer"
    assert issued["scope"] == "profile drafts:read"
    claims = claims_of(issued["access_token"])
    assert claims["scope"] == ["profile", "drafts:read"]
    assert claims["client_id"] == made["client_id"]
    assert claims["sub"] == account.id
    me = client.get("/api/me", headers=bearer(issued["access_token"])).get_json()["data"]
    assert me["email"] == account.email


def test_authorizations_list_and_revoke(client, account, other):
    made = register_app(client, other)
    issued = tokens(client, made, account)
    listed = client.get("/api/me/authorizations", headers=account.headers).get_json()["data"]
    assert [(a["client_id"], a["name"], a["scopes"]) for a in listed] == [
        (made["client_id"], "Photo Printer", ["profile", "posts:write"])
    ]
    url = f"/api/me/authorizations/{made['client_id']}"
    assert client.delete(url, headers=account.headers).status_code == 204
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 401
    assert client.get("/api/me/authorizations", headers=account.headers).get_json()["data"] == []
    assert_error(client.delete(url, headers=account.headers), 404, "NOT_FOUND")


def test_a_confidential_app_must_authenticate(client, account, other):
    made = register_app(client, other, confidential=True)
    code, verifier = get_code(client, made, account)
    assert_oauth_error(exchange(client, made, code, verifier), "invalid_client", 401)
    wrong = base64.b64encode(f"{made['client_id']}:nope".encode()).decode()
    answer = client.post("/oauth/token", data={"grant_type": "authorization_code", "code": code,
                         "redirect_uri": REDIRECT, "code_verifier": verifier},
                         headers={"Authorization": f"Basic {wrong}"})  # fmt: skip
    assert_oauth_error(answer, "invalid_client", 401)
    code, verifier = get_code(client, made, account)
    answer = exchange(client, made, code, verifier, client_secret=made["client_secret"])
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"


def test_refresh_rotates_and_may_narrow_the_scope(client, account, other):
    made = register_app(client, other)
    issued = tokens(client, made, account)
    narrowed = refresh(client, made, issued["refresh_token"], scope="profile")
    assert narrowed.status_code == 200
    body = narrowed.get_json()
    assert body["scope"] == "profile"
    assert body["refresh_token"] != issued["refresh_token"]
    assert claims_of(body["access_token"])["fam"] == claims_of(issued["access_token"])["fam"]


def test_revocation_endpoint_ends_the_grant(client, account, other):
    made = register_app(client, other)
    issued = tokens(client, made, account)
    answer = client.post("/oauth/revoke", data={"token": issued["refresh_token"],
                         "client_id": made["client_id"]})  # fmt: skip
    assert answer.status_code == 200
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 401
    assert_oauth_error(refresh(client, made, issued["refresh_token"]), "invalid_grant")
    unknown = client.post("/oauth/revoke", data={"token": "junk", "client_id": made["client_id"]})
    assert unknown.status_code == 200  # RFC 7009 §2.2: an unknown token is no error


def test_another_app_cannot_revoke_a_token(client, account, other):
    made = register_app(client, other)
    rival = register_app(client, other, name="Rival")
    issued = tokens(client, made, account)
    answer = client.post("/oauth/revoke", data={"token": issued["access_token"],
                         "client_id": rival["client_id"]})  # fmt: skip
    assert_oauth_error(answer, "invalid_grant")
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 200


def test_token_endpoint_errors_follow_rfc_6749(client, other):
    made = register_app(client, other)
    assert_oauth_error(client.post("/oauth/token", data={"grant_type": "password"}),
                       "unsupported_grant_type")  # fmt: skip
    assert_oauth_error(client.post("/oauth/token", data={"grant_type": "authorization_code",
                       "client_id": made["client_id"]}), "invalid_request")  # fmt: skip


def test_metadata_names_the_endpoints(client):
    meta = client.get("/.well-known/oauth-authorization-server").get_json()
    assert meta["authorization_endpoint"].endswith("/oauth/authorize")
    assert meta["token_endpoint"].endswith("/oauth/token")
    assert meta["revocation_endpoint"].endswith("/oauth/revoke")
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "admin" not in meta["scopes_supported"]


def test_sign_in_shows_the_app_its_owner_and_the_scopes_in_words(client, account, other):
    made = register_app(client, other, name="Photo <Printer>")
    page = client.get(authorize_query(made, pkce()[1])).get_data(as_text=True)
    assert "Photo &lt;Printer&gt;" in page  # escaped
    assert other.user["display_name"] in page
    assert "Write, change and delete your posts" in page
    assert '<label for="email">' in page


def test_a_wrong_password_on_the_page_is_the_logins_answer(client, account, other):
    made = register_app(client, other)
    url = authorize_query(made, pkce()[1])
    answer = sign_in(client, url, account, password="wrong password")
    assert answer.status_code == 401
    assert BAD_CREDENTIALS in answer.get_data(as_text=True)
    assert "Location" not in answer.headers


def test_the_page_shares_the_logins_lockout(client, account, other):
    made = register_app(client, other)
    url = authorize_query(made, pkce()[1])
    for _ in range(MAX_FAILURES):
        assert sign_in(client, url, account, password="wrong password").status_code == 401
    assert sign_in(client, url, account).status_code == 429
    login = client.post("/api/auth/login", json={"email": account.email, "password": "x"})
    assert login.status_code == 429


def test_form_bodies_are_still_415_on_json_routes(client, account):
    answer = client.patch(f"/api/users/{account.id}", data={"bio": "x"}, headers=account.headers)
    assert_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")
    answer = client.post("/api/auth/login", data={"email": "a@b.c", "password": "x"})
    assert_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_a_password_change_signs_the_page_out(client, account, other):
    made = register_app(client, other)
    url = authorize_query(made, pkce()[1])
    assert sign_in(client, url, account).status_code == 303
    assert "Allow" in client.get(url).get_data(as_text=True)
    changed = client.patch(
        f"/api/users/{account.id}",
        json={"password": "another good password", "current_password": "correct horse battery"},
        headers=bearer(account.tokens["access_token"]),
    )
    assert changed.status_code == 200
    page = client.get(url)
    assert 'name="password"' in page.get_data(as_text=True)
    assert csrf_of(page)


def test_two_revocations_of_one_grant_at_once_end_it_once_and_never_fail(
    app, client, account, other
):
    for _ in range(5):  # the race is narrow: several rounds
        made = register_app(client, other)
        issued = tokens(client, made, account)
        url = f"/api/me/authorizations/{made['client_id']}"
        barrier = threading.Barrier(2)

        def revoke(_: int, url: str = url, barrier: threading.Barrier = barrier) -> int:
            caller = app.test_client()
            barrier.wait(timeout=10)
            return caller.delete(url, headers=account.headers).status_code

        with ThreadPoolExecutor(max_workers=2) as pool:
            statuses = sorted(pool.map(revoke, range(2)))
        assert statuses in ([204, 204], [204, 404]), statuses
        assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 401
