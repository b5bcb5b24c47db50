"""The whole OAuth flow as a third-party app runs it, with authlib's own client
(`OAuth2Session`, PKCE S256), against a live gunicorn: register, authorize (a person signs in and
allows on the HTML page, driven here with `requests`), exchange, call the API, refresh, revoke."""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session, OAuthError

from tests.factories import PASSWORD

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(page: requests.Response) -> str:
    found = CSRF_RE.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


def person(base: str) -> tuple[dict, str]:
    """A user (registered over HTTP) and their first-party access token."""
    name = "u" + secrets.token_hex(5)
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    made = requests.post(f"{base}/api/users", json=user, timeout=10)
    assert made.status_code == 201, made.text
    credentials = {"email": user["email"], "password": PASSWORD}
    login = requests.post(f"{base}/api/auth/login", json=credentials, timeout=10)
    return {**user, "id": made.json()["data"]["id"]}, login.json()["data"]["access_token"]


def allow_in_browser(url: str, user: dict) -> str:
    """What the person does: sign in, read the page, press Allow; the redirect's URL."""
    browser = requests.Session()
    page = browser.get(url, timeout=10)
    assert page.status_code == 200
    form = {"csrf_token": csrf(page), "action": "signin", "email": user["email"],
            "password": user["password"]}  # fmt: skip
    signed_in = browser.post(url, data=form, timeout=10)
    assert signed_in.status_code == 200  # the 303 back to the consent page, followed
    assert "Allow" in signed_in.text
    allowed = browser.post(url, data={"csrf_token": csrf(signed_in), "action": "allow"},
                           allow_redirects=False, timeout=10)  # fmt: skip
    assert allowed.status_code == 302
    return allowed.headers["Location"]


@pytest.mark.parametrize("confidential", [False, True])
def test_an_app_runs_the_whole_flow_with_authlibs_client(server, confidential) -> None:
    http, _ = server
    base = http.base
    meta = requests.get(f"{base}/.well-known/oauth-authorization-server", timeout=10).json()
    _, developer_token = person(base)
    redirect_uri = f"http://127.0.0.1:{urlsplit(base).port}/callback"  # a native app's loopback
    registered = requests.post(
        f"{base}/api/oauth/clients",
        json={"name": "Printer", "redirect_uris": [redirect_uri],
              "scopes": ["profile", "posts:write"], "confidential": confidential},
        headers={"Authorization": f"Bearer {developer_token}"},
        timeout=10,
    ).json()["data"]  # fmt: skip
    user, _ = person(base)

    app = OAuth2Session(
        client_id=registered["client_id"],
        client_secret=registered.get("client_secret"),
        token_endpoint_auth_method="client_secret_basic" if confidential else "none",
        redirect_uri=redirect_uri,
        scope="profile posts:write",
        code_challenge_method="S256",
    )
    verifier = secrets.token_urlsafe(48)
    url, state = app.create_authorization_url(meta["authorization_endpoint"],
                                              code_verifier=verifier)  # fmt: skip
    back = allow_in_browser(url, user)
    assert back.startswith(redirect_uri + "?")
    token = app.fetch_token(meta["token_endpoint"], authorization_response=back,
                            code_verifier=verifier, state=state)  # fmt: skip
    assert token["scope"] == "profile posts:write"

    me = app.get(f"{base}/api/me", timeout=10)
    assert me.status_code == 200
    assert me.json()["data"]["email"] == user["email"]
    post = app.post(f"{base}/api/users/{user['id']}/posts", json={"title": "From an app"},
                    timeout=10)  # fmt: skip
    assert post.status_code == 201
    refused = app.patch(f"{base}/api/users/{user['id']}", json={"bio": "x"}, timeout=10)
    assert refused.status_code == 403
    assert 'scope="users:write"' in refused.headers["WWW-Authenticate"]

    first_refresh = token["refresh_token"]
    renewed = app.refresh_token(meta["token_endpoint"])
    assert renewed["refresh_token"] != first_refresh
    assert app.get(f"{base}/api/me", timeout=10).status_code == 200
    with pytest.raises(OAuthError) as reused:  # a spent refresh token: the grant ends
        app.refresh_token(meta["token_endpoint"], refresh_token=first_refresh)
    assert reused.value.error == "invalid_grant"
    assert app.get(f"{base}/api/me", timeout=10).status_code == 401


def test_a_user_revokes_an_app_and_every_process_refuses_its_tokens(server) -> None:
    http, _ = server
    base = http.base
    _, developer_token = person(base)
    redirect_uri = "https://printer.example/callback"
    registered = requests.post(
        f"{base}/api/oauth/clients",
        json={"name": "Printer", "redirect_uris": [redirect_uri], "scopes": ["profile"]},
        headers={"Authorization": f"Bearer {developer_token}"},
        timeout=10,
    ).json()["data"]
    user, user_token = person(base)
    app = OAuth2Session(client_id=registered["client_id"], redirect_uri=redirect_uri,
                        scope="profile", code_challenge_method="S256",
                        token_endpoint_auth_method="none")  # fmt: skip
    verifier = secrets.token_urlsafe(48)
    url, state = app.create_authorization_url(f"{base}/oauth/authorize", code_verifier=verifier)
    back = allow_in_browser(url, user)
    app.fetch_token(f"{base}/oauth/token", authorization_response=back, code_verifier=verifier,
                    state=state)  # fmt: skip
    for _ in range(4):  # both gunicorn workers accept it (and remember its signature)
        assert app.get(f"{base}/api/me", timeout=10).status_code == 200
    revoke = f"{base}/api/me/authorizations/{registered['client_id']}"
    gone = requests.delete(revoke, headers={"Authorization": f"Bearer {user_token}"}, timeout=10)
    assert gone.status_code == 204
    for _ in range(6):  # and every worker refuses it at once
        assert app.get(f"{base}/api/me", timeout=10).status_code == 401
