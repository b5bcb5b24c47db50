"""Attacks on the OAuth flow (contract §9, issue #18): each must fail, and fail safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.oauth.models import OAuthCode
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
    query_of,
    refresh,
    register_app,
    sign_in,
    tokens,
)


@pytest.fixture
def photo(client, other):
    return register_app(client, other)


def test_a_reused_code_is_invalid_grant_and_revokes_what_it_issued(client, account, photo):
    code, verifier = get_code(client, photo, account)
    first = exchange(client, photo, code, verifier)
    assert first.status_code == 200
    issued = first.get_json()
    assert client.get("/api/me", headers=bearer(issued["access_token"])).status_code == 200
    assert_oauth_error(exchange(client, photo, code, verifier), "invalid_grant")
    assert_error(client.get("/api/me", headers=bearer(issued["access_token"])), 401,
                 "UNAUTHENTICATED")  # fmt: skip
    assert_oauth_error(refresh(client, photo, issued["refresh_token"]), "invalid_grant")


def test_a_wrong_code_verifier_is_invalid_grant(client, account, photo):
    code, _ = get_code(client, photo, account)
    assert_oauth_error(exchange(client, photo, code, pkce()[0]), "invalid_grant")


def test_a_missing_code_verifier_is_refused(client, account, photo):
    code, _ = get_code(client, photo, account)
    assert_oauth_error(exchange(client, photo, code, None), "invalid_request")


def assert_refused_to_the_app(answer, description: str) -> None:
    """An error for a known app and its registered redirect URI goes back to it (RFC 6749
    §4.1.2.1), with no code."""
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith(REDIRECT + "?")
    back = query_of(answer.headers["Location"])
    assert back["error"] == "invalid_request"
    assert description in back["error_description"]
    assert "code" not in back


@pytest.mark.parametrize("method", ["plain", None])
def test_pkce_plain_or_no_method_is_refused_before_any_code(client, account, photo, method):
    verifier, _ = pkce()
    url = authorize_query(photo, verifier, code_challenge_method=method)
    assert_refused_to_the_app(client.get(url), "S256")


def test_no_code_challenge_at_all_is_refused(client, account, photo):
    answer = client.get(authorize_query(photo, "", code_challenge=None, code_challenge_method=None))
    assert_refused_to_the_app(answer, "PKCE is required")


def test_a_mismatched_redirect_uri_at_the_token_endpoint_is_invalid_grant(client, account):
    owner_app = register_app(client, account, redirect_uris=[REDIRECT, REDIRECT + "/other"])
    code, verifier = get_code(client, owner_app, account)
    answer = exchange(client, owner_app, code, verifier, redirect_uri=REDIRECT + "/other")
    assert_oauth_error(answer, "invalid_grant")


def test_another_clients_code_is_invalid_grant(client, account, other, photo):
    rival = register_app(client, other, name="Rival")
    code, verifier = get_code(client, photo, account)
    assert_oauth_error(exchange(client, rival, code, verifier), "invalid_grant")
    # the code stays bound to its own app: the rival's attempt gave it nothing
    assert exchange(client, photo, code, verifier).status_code == 200


def test_an_expired_code_is_invalid_grant(app, client, account, photo):
    code, verifier = get_code(client, photo, account)
    with app.app_context():
        db.session.execute(
            sa.update(OAuthCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        db.session.commit()
    assert_oauth_error(exchange(client, photo, code, verifier), "invalid_grant")


def test_codes_live_at_most_a_minute(app, client, account, photo):
    get_code(client, photo, account)
    with app.app_context():
        row = db.session.scalars(sa.select(OAuthCode).order_by(OAuthCode.id.desc())).first()
        assert row.expires_at - datetime.now(UTC) <= timedelta(seconds=60)


def test_beat_purges_codes_a_day_after_they_expired_and_keeps_the_rest(app, client, account, photo):
    from worker.tasks.maintenance import purge_expired_oauth_codes

    for _ in range(3):
        get_code(client, photo, account)
    now = datetime.now(UTC)
    with app.app_context():
        ids = list(db.session.scalars(sa.select(OAuthCode.id).order_by(OAuthCode.id)))[-3:]
        # Long expired; expired a minute ago (kept: a replay still revokes what it issued); live.
        for code_id, expires in zip(ids, (now - timedelta(days=2), now - timedelta(minutes=1)),
                                    strict=False):  # fmt: skip
            db.session.execute(
                sa.update(OAuthCode).where(OAuthCode.id == code_id).values(expires_at=expires)
            )
        db.session.commit()
        assert purge_expired_oauth_codes.run() == 1
        assert purge_expired_oauth_codes.run() == 0
        left = set(db.session.scalars(sa.select(OAuthCode.id)))
        assert ids[0] not in left
        assert {ids[1], ids[2]} <= left
    schedule = {
        e["task"]: e["schedule"] for e in app.extensions["celery"].conf.beat_schedule.values()
    }
    assert schedule.get("oauth.purge_expired_codes") == 3600.0


def test_the_consent_form_refuses_a_missing_or_foreign_csrf_token(client, app, account, photo):
    _, challenge = pkce()
    url = authorize_query(photo, challenge)
    assert sign_in(client, url, account).status_code == 303
    for token in (None, "forged-token"):
        data = {"action": "allow"} | ({"csrf_token": token} if token else {})
        answer = client.post(url, data=data)
        assert answer.status_code == 403
        assert "Location" not in answer.headers
    # a token from another browser's session is refused too
    stranger = app.test_client()
    foreign = csrf_of(stranger.get(url))
    answer = client.post(url, data={"action": "allow", "csrf_token": foreign})
    assert answer.status_code == 403


def test_a_cross_site_post_without_the_cookie_gets_no_code(app, client, account, photo):
    _, challenge = pkce()
    url = authorize_query(photo, challenge)
    page = client.get(url)
    attacker = app.test_client()  # no cookie: what a cross-site form post sends under SameSite
    answer = attacker.post(url, data={"action": "allow", "csrf_token": csrf_of(page)})
    assert answer.status_code == 403
    assert "Location" not in answer.headers


def test_the_page_cannot_be_framed_and_runs_no_script(client, photo):
    answer = client.get(authorize_query(photo, pkce()[1]))
    assert answer.headers["X-Frame-Options"] == "DENY"
    csp = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # default-src 'none': no script at all
    assert csp.startswith("default-src 'none'")
    assert "<script" not in answer.get_data(as_text=True)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        REDIRECT + ".evil.example",
        REDIRECT + "/../../evil",
        REDIRECT + "?next=https://evil.example",
        "https://app.example.com@evil.example/callback",
        "//evil.example/callback",
        "",
    ],
)
def test_an_unregistered_redirect_uri_is_an_error_page_never_a_redirect(
    client, photo, redirect_uri
):
    answer = client.get(authorize_query(photo, pkce()[1], redirect_uri=redirect_uri or None))
    assert answer.status_code == 400
    assert "Location" not in answer.headers
    assert answer.mimetype == "text/html"
    assert "evil" not in answer.headers.get("Content-Security-Policy", "")


def test_an_unknown_client_is_an_error_page(client, photo):
    answer = client.get(authorize_query({**photo, "client_id": "nope"}, pkce()[1]))
    assert answer.status_code == 400
    assert "Location" not in answer.headers


def test_state_comes_back_untouched_on_allow_and_deny(client, account, photo):
    state = "a b&c=d/é?%26"
    code, _ = get_code(client, photo, account, state=state)
    assert code
    _, challenge = pkce()
    url = authorize_query(photo, challenge, state=state)
    page = client.get(url)
    denied = client.post(url, data={"csrf_token": csrf_of(page), "action": "deny"})
    assert denied.status_code == 302
    assert denied.headers["Location"].startswith(REDIRECT + "?")
    back = query_of(denied.headers["Location"])
    assert (back["error"], back["state"]) == ("access_denied", state)
    assert "code" not in back


def test_scope_escalation_on_refresh_is_invalid_scope(client, account, other):
    narrow = register_app(client, other, scopes=["profile", "posts:write"])
    code, verifier = get_code(client, narrow, account, scope="profile")
    issued = exchange(client, narrow, code, verifier).get_json()
    assert issued["scope"] == "profile"
    escalated = refresh(client, narrow, issued["refresh_token"], scope="profile posts:write")
    assert_oauth_error(escalated, "invalid_scope")
    admin = refresh(client, narrow, issued["refresh_token"], scope="admin")
    assert_oauth_error(admin, "invalid_scope")


def test_asking_for_a_scope_the_app_never_registered_gets_no_code(client, account, photo):
    _, challenge = pkce()
    url = authorize_query(photo, challenge, scope="profile webhooks")
    answer = client.get(url)
    assert answer.status_code == 302
    assert query_of(answer.headers["Location"])["error"] == "invalid_scope"


def test_a_revoked_grants_refresh_token_is_refused(client, account, photo):
    issued = tokens(client, photo, account)
    gone = client.delete(f"/api/me/authorizations/{photo['client_id']}", headers=account.headers)
    assert gone.status_code == 204
    assert_oauth_error(refresh(client, photo, issued["refresh_token"]), "invalid_grant")
    assert_error(client.get("/api/me", headers=bearer(issued["access_token"])), 401,
                 "UNAUTHENTICATED")  # fmt: skip


def test_a_reused_refresh_token_ends_the_grant(client, account, photo):
    first = tokens(client, photo, account)
    rotated = refresh(client, photo, first["refresh_token"])
    assert rotated.status_code == 200
    newer = rotated.get_json()
    assert_oauth_error(refresh(client, photo, first["refresh_token"]), "invalid_grant")
    assert_oauth_error(refresh(client, photo, newer["refresh_token"]), "invalid_grant")
    assert client.get("/api/me", headers=bearer(newer["access_token"])).status_code == 401


def test_an_apps_refresh_token_is_refused_by_first_party_refresh(client, account, photo):
    issued = tokens(client, photo, account)
    answer = client.post("/api/auth/refresh", headers=bearer(issued["refresh_token"]))
    assert_error(answer, 401, "UNAUTHENTICATED")


def test_a_first_party_refresh_token_is_refused_at_the_token_endpoint(client, account, photo):
    answer = refresh(client, photo, account.tokens["refresh_token"])
    assert_oauth_error(answer, "invalid_grant")


def test_an_app_token_without_the_scope_is_403_on_rest_and_graphql(client, account, other):
    reader = register_app(client, other, scopes=["profile"])
    issued = tokens(client, reader, account)
    answer = client.post(f"/api/users/{account.id}/posts", json={"title": "t", "body": "b"},
                         headers=bearer(issued["access_token"]))  # fmt: skip
    assert_error(answer, 403, "FORBIDDEN")
    assert answer.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="posts:write"'
    )
    mutation = 'mutation { createPost(userId: "%s", input: {title: "t", body: "b"}) { id } }'
    graphql = client.post("/graphql", json={"query": mutation % account.id},
                          headers=bearer(issued["access_token"]))  # fmt: skip
    assert graphql.get_json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert 'scope="posts:write"' in graphql.headers["WWW-Authenticate"]


def test_an_admins_app_token_never_carries_admin(client, admin, other):
    photo = register_app(client, other, scopes=["profile"])
    issued = tokens(client, photo, admin)
    assert issued["scope"] == "profile"
    answer = client.delete(f"/api/users/{other.id}", headers=bearer(issued["access_token"]))
    assert answer.status_code == 403
