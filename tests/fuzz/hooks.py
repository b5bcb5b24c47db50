"""schemathesis hooks for `make fuzz` (loaded through SCHEMATHESIS_HOOKS by tests/fuzz/run.py).

Authenticates every request as an admin, so the fuzzer reaches every operation's real logic.
The fuzzer will, sooner or later, log that admin out or delete it (both are operations under
test); on the 401 that follows, schemathesis asks for a new token, and if the admin can no longer
log in, a fresh one is created directly through the service layer.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from typing import Any

import schemathesis

BASE_URL = os.environ["FUZZ_BASE_URL"]
PASSWORD = os.environ["FUZZ_ADMIN_PASSWORD"]
_admin_email = os.environ["FUZZ_ADMIN_EMAIL"]


def _login(email: str) -> dict[str, Any] | None:
    request = urllib.request.Request(
        f"{BASE_URL}/api/auth/login",
        data=json.dumps({"email": email, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"]
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return None
        raise


def _new_admin() -> str:
    from app import create_app
    from app.core.pagination import CursorCodec
    from app.extensions import db
    from app.users.service import UserService

    app = create_app()
    name = f"fuzz_admin_{uuid.uuid4().hex[:8]}"
    with app.app_context():
        service = UserService(db.session(), codec=CursorCodec(app.config["SECRET_KEY"]))
        user = service.register(
            {
                "email": f"{name}@example.com",
                "username": name,
                "password": PASSWORD,
                "is_admin": True,
            }
        )
        db.session.remove()
        return user.email


@schemathesis.auth()
class AdminToken:
    def get(self, case: Any, ctx: Any) -> dict[str, Any]:
        global _admin_email
        tokens = _login(_admin_email)
        if tokens is None:  # the fuzzer deleted our admin: make another
            _admin_email = _new_admin()
            tokens = _login(_admin_email)
        assert tokens is not None, "a freshly created admin could not log in"
        return tokens

    def set(self, case: Any, data: dict[str, Any], ctx: Any) -> None:
        # The refresh endpoint takes the refresh token; every other one the access token.
        kind = "refresh_token" if case.operation.path == "/api/auth/refresh" else "access_token"
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data[kind]}"
