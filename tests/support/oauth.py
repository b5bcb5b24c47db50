"""Shared steps of the OAuth tests: register an app, run the consent page like a browser
(the test client keeps the page's cookie), exchange codes. PKCE values are made here, S256."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.factories import PASSWORD

REDIRECT = "https://app.example.com/callback"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def register_app(client: Any, owner: Any, *, scopes: list[str] | None = None,
                 confidential: bool = False, redirect_uris: list[str] | None = None,
                 name: str = "Photo Printer") -> dict[str, Any]:  # fmt: skip
    response = client.post(
        "/api/oauth/clients",
        json={
            "name": name,
            "redirect_uris": redirect_uris or [REDIRECT],
            "scopes": scopes or ["profile", "posts:write"],
            "confidential": confidential,
        },
        headers=owner.headers,
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json()["data"])


def authorize_query(app: dict[str, Any], challenge: str, **overrides: str) -> str:
    params = {
        "response_type": "code",
        "client_id": app["client_id"],
        "redirect_uri": app["redirect_uris"][0],
        "scope": " ".join(app["scopes"]),
        "state": "s-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **overrides,
    }
    return "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})


def csrf_of(response: Any) -> str:
    found = CSRF_RE.search(response.get_data(as_text=True))
    assert found, response.get_data(as_text=True)[:500]
    return found.group(1)


def sign_in(client: Any, url: str, account: Any, password: str = PASSWORD) -> Any:
    page = client.get(url)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    data = {"csrf_token": csrf_of(page), "action": "signin", "email": account.email,
            "password": password}  # fmt: skip
    return client.post(url, data=data)


def decide(client: Any, url: str, action: str = "allow") -> Any:
    page = client.get(url)
    assert page.status_code == 200
    return client.post(url, data={"csrf_token": csrf_of(page), "action": action})


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def get_code(client: Any, app: dict[str, Any], account: Any, **overrides: str) -> tuple[str, str]:
    """Sign in and allow: (code, verifier)."""
    verifier, challenge = pkce()
    url = authorize_query(app, challenge, **overrides)
    assert sign_in(client, url, account).status_code == 303
    answer = decide(client, url)
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return query_of(answer.headers["Location"])["code"], verifier


def exchange(client: Any, app: dict[str, Any], code: str, verifier: str | None,
             **extra: str) -> Any:  # fmt: skip
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app["redirect_uris"][0],
        "client_id": app["client_id"],
        **extra,
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    return client.post("/oauth/token", data=data)


def refresh(client: Any, app: dict[str, Any], refresh_token: str, **extra: str) -> Any:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": app["client_id"], **extra}  # fmt: skip
    return client.post("/oauth/token", data=data)


def tokens(client: Any, app: dict[str, Any], account: Any) -> dict[str, Any]:
    code, verifier = get_code(client, app, account)
    answer = exchange(client, app, code, verifier)
    assert answer.status_code == 200, answer.get_json()
    return dict(answer.get_json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_oauth_error(response: Any, error: str, status: int = 400) -> None:
    """RFC 6749 §5.2: the one answer not in the contract's envelope."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert body["error"] == error, body
    assert "code" not in body
