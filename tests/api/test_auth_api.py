"""Contract §3, auth rows: login, refresh with rotation, logout, and what an access token is."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from flask_jwt_extended import create_access_token, create_refresh_token

from app.core.security import USER_SCOPES
from tests import factories
from tests.factories import PASSWORD, WRONG_KEY, b64url, bearer, claims_of, login, register
from tests.support.assertions import assert_error
from tests.support.backends import reset_cache, reset_redis


def assert_unauthenticated(response: Any) -> dict[str, Any]:
    error = assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), response.headers
    return error


def header_of(token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(token)


def set_admin(app: Any, user_id: str, value: bool) -> None:
    factories.set_admin(app, user_id, value)
    # Changed behind the API's back: drop the cached user so the new state is read.
    reset_redis()
    reset_cache()


def issue(app: Any, identity: str, *, refresh: bool = False, **kwargs: Any) -> str:
    """A token signed with the app's real key, for claims the API would never issue."""
    kwargs.setdefault("additional_claims", {"scope": list(USER_SCOPES)})
    with app.app_context():
        create = create_refresh_token if refresh else create_access_token
        return create(identity=identity, **kwargs)


@pytest.fixture
def unchanged_user(client: Any, row_counts: Callable[[], dict[str, int]]) -> Callable[..., Any]:
    """`with unchanged_user(account):` asserts no row count and none of their data changed."""

    @contextmanager
    def check(account: Any) -> Iterator[None]:
        before = (row_counts(), client.get("/api/me", headers=account.headers).get_json())
        yield
        after = (row_counts(), client.get("/api/me", headers=account.headers).get_json())
        assert after == before

    return check


def spend_together(app: Any, path: str, token: str, n: int = 2) -> list[tuple[int, Any]]:
    """POST `path` with the same Bearer token from `n` threads at once, each its own client."""
    barrier = threading.Barrier(n)

    def attempt(_: int) -> tuple[int, Any]:
        client = app.test_client()
        barrier.wait(timeout=10)
        response = client.post(path, headers=bearer(token))
        return response.status_code, response.get_json(silent=True)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(attempt, range(n)))


# Login -----------------------------------------------------------------------------------------


def test_login_returns_a_token_pair(client, account):
    response = client.post("/api/auth/login", json={"email": account.email, "password": PASSWORD})

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(data) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert data["token_type"] == "Bearer"
    assert isinstance(data["expires_in"], int)
    assert not isinstance(data["expires_in"], bool)
    assert data["expires_in"] > 0
    assert isinstance(data["access_token"], str)
    assert isinstance(data["refresh_token"], str)
    assert data["access_token"] != data["refresh_token"]
    assert PASSWORD not in response.get_data(as_text=True)

    me = client.get("/api/me", headers=bearer(data["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["data"]["id"] == account.id


@pytest.mark.parametrize("transform", [str.upper, str.title, lambda e: e[0].upper() + e[1:]])
def test_login_email_is_case_insensitive(client, account, transform):
    email = transform(account.email)
    assert email != account.email
    assert login(client, email)["token_type"] == "Bearer"


def test_login_with_a_mixed_case_registration(client):
    user = register(client, email=f"Mixed.Case.{uuid.uuid4().hex[:6]}@Example.COM")
    login(client, user["email"].lower())
    login(client, user["email"].upper())


def test_login_with_a_unicode_password(client):
    password = "пароль 😀 密码 ß"
    user = register(client, password=password)
    login(client, user["email"], password)
    wrong = client.post("/api/auth/login", json={"email": user["email"], "password": "пароль"})
    assert_unauthenticated(wrong)


def test_bad_credentials_get_one_answer(client, account, row_counts):
    before = row_counts()
    unknown = client.post(
        "/api/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    wrong = client.post("/api/auth/login", json={"email": account.email, "password": "wrong pw!"})
    wrong_case = client.post(
        "/api/auth/login", json={"email": account.email, "password": PASSWORD.upper()}
    )

    errors = [assert_unauthenticated(r) for r in (unknown, wrong, wrong_case)]
    assert errors[0] == errors[1] == errors[2]
    assert "access_token" not in wrong.get_data(as_text=True)
    assert row_counts() == before


def test_deleted_user_cannot_log_in(client, account):
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    response = client.post("/api/auth/login", json={"email": account.email, "password": PASSWORD})
    unknown = client.post(
        "/api/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert assert_unauthenticated(response) == assert_unauthenticated(unknown)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"email", "password"}),
        ({"email": "a@example.com"}, {"password"}),
        ({"password": PASSWORD}, {"email"}),
        ({"email": "", "password": ""}, {"email", "password"}),
        ({"email": None, "password": PASSWORD}, {"email"}),
        ({"email": 42, "password": ["x"]}, {"email", "password"}),
        ({"email": "a@example.com", "password": PASSWORD, "remember": True}, {"remember"}),
    ],
    ids=["empty", "no-password", "no-email", "blank", "null", "wrong-types", "unknown-field"],
)
def test_login_validation(client, row_counts, body, fields):
    before = row_counts()
    error = assert_error(client.post("/api/auth/login", json=body), 400, "VALIDATION_ERROR")
    assert {d["field"] for d in error["details"]} == fields
    assert row_counts() == before


def test_login_body_must_be_json(client, account):
    form = client.post("/api/auth/login", data={"email": account.email, "password": PASSWORD})
    assert_error(form, 415, "UNSUPPORTED_MEDIA_TYPE")
    invalid = client.post("/api/auth/login", data="{", content_type="application/json")
    assert_error(invalid, 400, "VALIDATION_ERROR")
    array = client.post("/api/auth/login", data="[]", content_type="application/json")
    assert_error(array, 400, "VALIDATION_ERROR")


# What a token carries --------------------------------------------------------------------------


def test_access_token_claims(account):
    claims = claims_of(account.tokens["access_token"])
    assert header_of(account.tokens["access_token"])["alg"] == "HS256"
    assert claims["sub"] == account.id
    assert isinstance(claims["sub"], str)
    assert isinstance(claims["iat"], int)
    assert isinstance(claims["exp"], int)
    assert claims["exp"] - claims["iat"] == account.tokens["expires_in"]
    assert abs(claims["iat"] - datetime.now(UTC).timestamp()) < 60
    assert claims["scope"] == ["profile", "users:write", "posts:write", "drafts:read", "webhooks"]
    # The email and any internal key stay out of the token.
    assert account.email not in json.dumps(claims)


def test_admin_token_carries_admin_scope(admin):
    claims = claims_of(admin.tokens["access_token"])
    assert isinstance(claims["scope"], list)
    assert "admin" in claims["scope"]
    assert claims["sub"] == admin.id


def test_refresh_token_names_the_same_user(account):
    claims = claims_of(account.tokens["refresh_token"])
    assert claims["sub"] == account.id
    assert claims["exp"] > claims_of(account.tokens["access_token"])["exp"]


# Tokens that are refused -----------------------------------------------------------------------


def forged_signature(app: Any, account: Any) -> str:
    return jwt.encode(claims_of(account.tokens["access_token"]), WRONG_KEY, algorithm="HS256")


def tampered_payload(app: Any, account: Any) -> str:
    """The user's own token, the payload changed to claim admin, the signature kept."""
    header, _payload, signature = account.tokens["access_token"].split(".")
    claims = {**claims_of(account.tokens["access_token"]), "scope": ["admin"]}
    return f"{header}.{b64url(claims)}.{signature}"


def alg_none_pyjwt(app: Any, account: Any) -> str:
    return jwt.encode(claims_of(account.tokens["access_token"]), key=None, algorithm="none")


def alg_none_by_hand(alg: str) -> Callable[[Any, Any], str]:
    def build(app: Any, account: Any) -> str:
        claims = claims_of(account.tokens["access_token"])
        return f"{b64url({'alg': alg, 'typ': 'JWT'})}.{b64url(claims)}."

    return build


def alg_none_keeping_signature(app: Any, account: Any) -> str:
    _header, payload, signature = account.tokens["access_token"].split(".")
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"


def expired(app: Any, account: Any) -> str:
    return issue(app, account.id, expires_delta=timedelta(seconds=-1))


def expired_by_hand(app: Any, account: Any) -> str:
    claims = claims_of(account.tokens["access_token"])
    past = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    claims.update(iat=past - 900, nbf=past - 900, exp=past)
    return jwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")


def sub_not_a_uuid(app: Any, account: Any) -> str:
    return issue(app, "not-a-uuid")


def sub_internal_id(app: Any, account: Any) -> str:
    return issue(app, "1")


def sub_unknown_user(app: Any, account: Any) -> str:
    return issue(app, str(uuid.uuid4()))


def sub_missing(app: Any, account: Any) -> str:
    claims = claims_of(account.tokens["access_token"])
    del claims["sub"]
    return jwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")


BAD_TOKENS = {
    "forged-signature": forged_signature,
    "tampered-payload": tampered_payload,
    "alg-none-pyjwt": alg_none_pyjwt,
    "alg-none": alg_none_by_hand("none"),
    "alg-None": alg_none_by_hand("None"),
    "alg-NONE": alg_none_by_hand("NONE"),
    "alg-none-keeping-signature": alg_none_keeping_signature,
    "expired": expired,
    "expired-by-hand": expired_by_hand,
    "sub-not-a-uuid": sub_not_a_uuid,
    "sub-internal-id": sub_internal_id,
    "sub-unknown-user": sub_unknown_user,
    "sub-missing": sub_missing,
}


@pytest.mark.parametrize("make_token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_bad_tokens_are_401(app, client, account, row_counts, make_token):
    token = make_token(app, account)
    before = row_counts()

    assert_unauthenticated(client.get("/api/me", headers=bearer(token)))
    assert_unauthenticated(
        client.patch(f"/api/users/{account.id}", json={"bio": "x"}, headers=bearer(token))
    )
    assert_unauthenticated(client.post("/api/auth/logout", headers=bearer(token)))
    assert row_counts() == before
    me = client.get("/api/me", headers=account.headers).get_json()["data"]
    assert me["bio"] == account.user["bio"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ...",
        "Bearer eyJhbGciOiJIUzI1NiJ9",
        "Bearer ",
        "Bearer",
        "Bearer \x7f",
        "Bearer " + "A" * 4000,
        "Token abc",
        "Basic dXNlcjpwYXNzd29yZA==",
        "bearer-ish abc",
        "garbage",
    ],
)
def test_garbage_authorization_headers_are_401(client, authorization):
    response = client.get("/api/me", headers={"Authorization": authorization})
    assert_unauthenticated(response)


def test_basic_scheme_with_valid_credentials_is_401(client, account):
    raw = base64.b64encode(f"{account.email}:{PASSWORD}".encode()).decode()
    assert_unauthenticated(client.get("/api/me", headers={"Authorization": f"Basic {raw}"}))


def test_a_valid_token_in_another_scheme_is_401(client, account):
    token = account.tokens["access_token"]
    assert_unauthenticated(client.get("/api/me", headers={"Authorization": f"Basic {token}"}))
    assert_unauthenticated(client.get("/api/me", headers={"Authorization": token}))


def test_deleted_users_token_is_401(client, account):
    access, refresh = account.tokens["access_token"], account.tokens["refresh_token"]
    assert client.delete(f"/api/users/{account.id}", headers=account.headers).status_code == 204
    assert_unauthenticated(client.get("/api/me", headers=bearer(access)))
    assert_unauthenticated(client.post("/api/auth/refresh", headers=bearer(refresh)))


def test_refresh_token_is_not_an_access_token(client, account, unchanged_user):
    refresh = bearer(account.tokens["refresh_token"])
    with unchanged_user(account):
        assert_unauthenticated(client.get("/api/me", headers=refresh))
        assert_unauthenticated(
            client.patch(f"/api/users/{account.id}", json={"bio": "x"}, headers=refresh)
        )
        assert_unauthenticated(client.post("/api/auth/logout", headers=refresh))
    # The refresh token was not consumed by those attempts.
    assert client.post("/api/auth/refresh", headers=refresh).status_code == 200


def test_access_token_cannot_refresh(client, account, row_counts):
    before = row_counts()
    assert_unauthenticated(client.post("/api/auth/refresh", headers=account.headers))
    assert_unauthenticated(client.post("/api/auth/refresh"))
    assert row_counts() == before
    # The access token still works: nothing was revoked.
    assert client.get("/api/me", headers=account.headers).status_code == 200


def test_refresh_token_signed_with_another_key_is_401(app, client, account):
    forged = jwt.encode(claims_of(account.tokens["refresh_token"]), WRONG_KEY, algorithm="HS256")
    assert_unauthenticated(client.post("/api/auth/refresh", headers=bearer(forged)))
    expired_refresh = issue(app, account.id, refresh=True, expires_delta=timedelta(seconds=-1))
    assert_unauthenticated(client.post("/api/auth/refresh", headers=bearer(expired_refresh)))


# Refresh ---------------------------------------------------------------------------------------


def test_refresh_rotates_the_pair(client, account):
    old_refresh = account.tokens["refresh_token"]
    response = client.post("/api/auth/refresh", headers=bearer(old_refresh))

    assert response.status_code == 200
    data = response.get_json()["data"]
    assert set(data) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert data["token_type"] == "Bearer"
    assert isinstance(data["expires_in"], int)
    assert data["refresh_token"] != old_refresh
    assert data["access_token"] != account.tokens["access_token"]
    assert claims_of(data["access_token"])["sub"] == account.id

    me = client.get("/api/me", headers=bearer(data["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["data"]["id"] == account.id

    # Rotation: the new refresh token works (once), the old one is spent. (Presenting a spent
    # one also revokes the whole family: tests/api/test_auth_hardening.py.)
    newer = client.post("/api/auth/refresh", headers=bearer(data["refresh_token"]))
    assert newer.status_code == 200
    assert_unauthenticated(client.post("/api/auth/refresh", headers=bearer(old_refresh)))
    assert_unauthenticated(client.post("/api/auth/refresh", headers=bearer(data["refresh_token"])))


@pytest.fixture
def other_process(make_app: Callable[..., Any]) -> Any:
    """A second app on the same database and Redis, as another web process would be."""
    return make_app()


def test_revocation_is_shared_with_another_app_process(client, account, other_process):
    other_client = other_process.test_client()
    assert other_client.get("/api/me", headers=account.headers).status_code == 200

    old_refresh = bearer(account.tokens["refresh_token"])
    assert client.post("/api/auth/refresh", headers=old_refresh).status_code == 200
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204

    assert_unauthenticated(other_client.get("/api/me", headers=account.headers))
    assert_unauthenticated(other_client.post("/api/auth/refresh", headers=old_refresh))


# Logout ----------------------------------------------------------------------------------------


def test_logout_revokes_that_access_token(client, account):
    other_session = login(client, account.email)

    response = client.post("/api/auth/logout", headers=account.headers)
    assert response.status_code == 204
    assert response.get_data() == b""

    assert_unauthenticated(client.get("/api/me", headers=account.headers))
    assert_unauthenticated(
        client.patch(f"/api/users/{account.id}", json={"bio": "x"}, headers=account.headers)
    )
    assert_unauthenticated(client.post("/api/auth/logout", headers=account.headers))
    # Only that token: another login of the same user still works.
    me = client.get("/api/me", headers=bearer(other_session["access_token"]))
    assert me.status_code == 200
    assert me.get_json()["data"]["bio"] == account.user["bio"]


def test_logout_needs_a_token(client, row_counts):
    before = row_counts()
    assert_unauthenticated(client.post("/api/auth/logout"))
    assert row_counts() == before


# Admin scope follows the user's current state --------------------------------------------------


def as_someone(client: Any, method: str, target: Any, headers: dict[str, str]) -> Any:
    """A write on `target`'s account that only they or an admin may make."""
    url = f"/api/users/{target.id}"
    if method == "PUT":
        body = {
            "email": target.email,
            "username": target.user["username"],
            "display_name": "Changed",
            "bio": "Changed.",
        }
        return client.put(url, json=body, headers=headers)
    if method == "PATCH":
        return client.patch(url, json={"bio": "Changed."}, headers=headers)
    if method == "PASSWORD":
        return client.patch(url, json={"password": "a new password"}, headers=headers)
    return client.delete(url, headers=headers)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "PASSWORD", "DELETE"])
def test_admin_token_works_while_admin(app, client, admin, account, method):
    response = as_someone(client, method, account, admin.headers)
    assert response.status_code in (200, 204), response.get_json()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "PASSWORD", "DELETE"])
def test_demoted_admin_loses_admin_powers(app, client, admin, account, unchanged_user, method):
    assert "admin" in claims_of(admin.tokens["access_token"])["scope"]
    set_admin(app, admin.id, False)

    with unchanged_user(account):
        response = as_someone(client, method, account, admin.headers)
    assert_error(response, 403, "FORBIDDEN")
    seen = client.get(f"/api/users/{account.id}", headers=admin.headers).get_json()["data"]
    assert "email" not in seen
    login(client, account.email)


def test_demoted_admin_stays_a_user_with_a_narrower_scope(app, client, admin):
    set_admin(app, admin.id, False)
    me = client.get("/api/me", headers=admin.headers)
    assert me.status_code == 200
    assert me.get_json()["data"]["email"] == admin.email
    refreshed = client.post("/api/auth/refresh", headers=bearer(admin.tokens["refresh_token"]))
    assert refreshed.status_code == 200
    assert "admin" not in claims_of(refreshed.get_json()["data"]["access_token"])["scope"]


def test_promoted_user_gets_admin_scope_at_next_login(app, client, account, make_account):
    other = make_account()
    set_admin(app, account.id, True)
    fresh = login(client, account.email)
    assert "admin" in claims_of(fresh["access_token"])["scope"]
    response = client.get(f"/api/users/{other.id}", headers=bearer(fresh["access_token"]))
    assert response.get_json()["data"]["email"] == other.email


# Races ---------------------------------------------------------------------------------------


def test_concurrent_refreshes_spend_the_token_once(app, client, make_account):
    """Rotation holds under a race: one refresh token never becomes two pairs, never a 500.

    Two uses of one refresh token are a reuse: the loser's 401 revokes the token family, so the
    winner's new pair is refused as well (reuse detection, tests/api/test_auth_hardening.py)."""
    for _ in range(5):
        account = make_account()
        results = spend_together(app, "/api/auth/refresh", account.tokens["refresh_token"])
        assert sorted(status for status, _ in results) == [200, 401], results
        loser = next(body for status, body in results if status == 401)
        assert loser["error"]["code"] == "UNAUTHENTICATED"
        winner = next(body for status, body in results if status == 200)
        me = client.get("/api/me", headers=bearer(winner["data"]["access_token"]))
        assert_unauthenticated(me)
        again = client.post("/api/auth/refresh", headers=bearer(winner["data"]["refresh_token"]))
        assert_unauthenticated(again)


def test_concurrent_logouts_with_one_token(app, client, make_account):
    """Two logouts with one token: one 204, one 401 (already revoked), never a 500."""
    for _ in range(5):
        account = make_account()
        results = spend_together(app, "/api/auth/logout", account.tokens["access_token"])
        assert sorted(status for status, _ in results) == [204, 401], results
        assert_unauthenticated(client.get("/api/me", headers=account.headers))
