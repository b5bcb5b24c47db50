"""A real browser (Debian's chromium, driven by playwright) through the consent page: sign in,
read what the app asks, Allow, land on the app's redirect URI with a code that works. The
consent page's screenshot is kept under test-artifacts/ (its path is printed in the output)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.factories import PASSWORD
from tests.support.backends import ON_POSTGRES
from tests.support.live import free_port
from tests.support.paths import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run does)",
)


def person(base: str) -> tuple[dict, str]:
    name = "u" + secrets.token_hex(5)
    user = {"email": f"{name}@example.com", "username": name, "password": PASSWORD,
            "display_name": "Ada Lovelace"}  # fmt: skip
    assert requests.post(f"{base}/api/users", json=user, timeout=10).status_code == 201
    credentials = {"email": user["email"], "password": PASSWORD}
    login = requests.post(f"{base}/api/auth/login", json=credentials, timeout=10)
    return user, login.json()["data"]["access_token"]


def test_sign_in_and_allow_in_chromium(server, capsys) -> None:
    from playwright.sync_api import sync_playwright

    http, _ = server
    base = http.base
    _, developer_token = person(base)
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    app = requests.post(
        f"{base}/api/oauth/clients",
        json={"name": "Photo Printer", "redirect_uris": [redirect_uri],
              "scopes": ["profile", "posts:write"]},
        headers={"Authorization": f"Bearer {developer_token}"},
        timeout=10,
    ).json()["data"]  # fmt: skip
    user, _ = person(base)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    state = "st-" + secrets.token_hex(6)
    url = f"{base}/oauth/authorize?" + urlencode({
        "response_type": "code", "client_id": app["client_id"], "redirect_uri": redirect_uri,
        "scope": "profile posts:write", "state": state,
        "code_challenge": challenge.rstrip(b"=").decode(), "code_challenge_method": "S256",
    })  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"oauth-consent-{'postgres' if ON_POSTGRES else 'embedded'}.png"
    console: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 420, "height": 760})
            page.on("console", lambda message: console.append(message.text))
            # The app's redirect URI: answered here, as the app's own listener would.
            page.route(redirect_uri + "*", lambda route: route.fulfill(status=200, body="ok"))
            page.goto(url)
            page.get_by_label("Email").fill(user["email"])
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Allow Photo Printer?").wait_for()
            text = page.inner_text("main")
            assert "Signed in as Ada Lovelace" in text
            assert "See your profile, including your email address" in text
            assert "Write, change and delete your posts" in text
            # The stylesheet applied under the page's CSP (the card is laid out by it).
            width = page.eval_on_selector(".card", "e => getComputedStyle(e).maxWidth")
            assert width == "416px"
            page.screenshot(path=str(shot), full_page=True)
            page.get_by_role("button", name="Allow").click()
            page.wait_for_url(redirect_uri + "?*")
            landed = page.url
        finally:
            browser.close()

    with capsys.disabled():
        print(f"\nconsent page screenshot: {shot}")
    assert shot.stat().st_size > 5000
    assert not [line for line in console if "Content Security Policy" in line], console
    back = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
    assert back["state"] == state
    token = requests.post(f"{base}/oauth/token", data={
        "grant_type": "authorization_code", "code": back["code"], "redirect_uri": redirect_uri,
        "client_id": app["client_id"], "code_verifier": verifier,
    }, timeout=10)  # fmt: skip
    assert token.status_code == 200, token.text
    assert token.json()["scope"] == "profile posts:write"
