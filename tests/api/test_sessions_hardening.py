"""Sessions and tokens (issue #13 items 1 and 2, contract §3): a password change ends every other
login of the user at once, in every process, while the login that made it keeps working; a
token is accepted only with the claims the contract requires (`sub` a user uuid, `iat`, `exp`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from flask import Flask
from flask_jwt_extended import create_access_token

from app import create_app
from app.core.security import passwords
from app.extensions import db
from tests.conftest import PASSWORD, assert_error, bearer, login, register, test_config

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def other_process(app: Flask) -> Iterator[Flask]:
    """Another web process: its own app on the same database, cache and Redis."""
    other = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"]))
    yield other
    with other.app_context():
        db.engine.dispose()
    passwords.configure(app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST_KIB"])


def me(client: Any, token: str) -> int:
    return int(client.get("/api/me", headers=bearer(token)).status_code)


def refresh(client: Any, token: str) -> Any:
    return client.post("/api/auth/refresh", headers=bearer(token))


def change_password(client: Any, user_id: str, token: str, **body: Any) -> Any:
    return client.patch(f"/api/users/{user_id}", json=body, headers=bearer(token))


def assert_refused(response: Any) -> None:
    assert_error(response, 401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


# Item 1: a password change ends every other login ----------------------------------------------


def test_a_password_change_ends_every_other_login_but_not_its_own(client, other_process):
    user = register(client)
    first, second = login(client, user["email"]), login(client, user["email"])
    elsewhere = other_process.test_client()
    assert me(elsewhere, second["access_token"]) == 200  # the other process has it cached

    changed = change_password(
        client, user["id"], first["access_token"], password=NEW_PASSWORD, current_password=PASSWORD
    )
    assert changed.status_code == 200, changed.get_json()

    for process in (client, elsewhere):  # at once, in every process
        assert_refused(process.get("/api/me", headers=bearer(second["access_token"])))
        assert_refused(refresh(process, second["refresh_token"]))
    # The login that made the change goes on, refreshes included.
    assert me(client, first["access_token"]) == 200
    assert me(elsewhere, first["access_token"]) == 200
    rotated = refresh(client, first["refresh_token"])
    assert rotated.status_code == 200
    assert me(elsewhere, rotated.get_json()["data"]["access_token"]) == 200
    # A login with the new password, in the same second as the change, is a new login: valid.
    fresh = login(client, user["email"], NEW_PASSWORD)
    assert me(client, fresh["access_token"]) == 200
    assert me(elsewhere, fresh["refresh_token"]) == 401  # (a refresh token is never an access)
    assert refresh(elsewhere, fresh["refresh_token"]).status_code == 200


def test_an_admins_reset_ends_every_login_of_the_user(client, make_account, caplog):
    caplog.set_level(logging.INFO, logger="app.security")
    admin, user = make_account(admin=True), make_account()
    other = login(client, user.email)
    reset = change_password(client, user.id, admin.tokens["access_token"], password=NEW_PASSWORD)
    assert reset.status_code == 200, reset.get_json()
    for tokens in (user.tokens, other):
        assert_refused(client.get("/api/me", headers=bearer(tokens["access_token"])))
        assert_refused(refresh(client, tokens["refresh_token"]))
    assert me(client, admin.tokens["access_token"]) == 200  # the admin's own login is untouched
    (event,) = [r for r in caplog.records if r.getMessage() == "password_changed"]
    assert (event.user_id, event.actor_id) == (user.id, admin.id)  # the audit trail says who
    assert me(client, login(client, user.email, NEW_PASSWORD)["access_token"]) == 200


def test_a_token_of_no_login_minted_in_the_changes_second_is_ended(client, app, account):
    """`iat` has whole seconds: a token without a login family issued in the same second as the
    change cannot be told from one issued just before it, so it is ended too."""
    with app.app_context():
        loose = create_access_token(identity=account.id, additional_claims={"scope": []})
    assert me(client, loose) == 200
    changed = change_password(
        client, account.id, account.tokens["access_token"], password=NEW_PASSWORD,
        current_password=PASSWORD,
    )  # fmt: skip
    assert changed.status_code == 200
    assert jwt.decode(loose, options={"verify_signature": False})["iat"] >= int(time.time()) - 1
    assert_refused(client.get("/api/me", headers=bearer(loose)))
    assert me(client, account.tokens["access_token"]) == 200


def test_a_profile_change_without_a_new_password_ends_no_login(client, account):
    other = login(client, account.email)
    response = client.patch(
        f"/api/users/{account.id}", json={"bio": "still me"}, headers=account.headers
    )
    assert response.status_code == 200
    assert me(client, other["access_token"]) == 200
    assert refresh(client, other["refresh_token"]).status_code == 200


# Item 2: only tokens with the claims the contract requires -------------------------------------


def forge(app: Flask, *, drop: tuple[str, ...] = (), header: dict[str, Any] | None = None,
          **claims: Any) -> str:  # fmt: skip
    """A token signed with the service's own key, with these claims changed or dropped."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": claims.pop("sub", None),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "type": "access",
        "fresh": False,
        "scope": [],
        **claims,
    }
    for name in drop:
        body.pop(name)
    key = app.config["JWT_SECRET_KEY"]
    return jwt.encode(body, key, algorithm=app.config["JWT_ALGORITHM"], headers=header)


BAD_TOKENS: dict[str, Callable[[Flask, str], str]] = {
    "no exp": lambda app, sub: forge(app, sub=sub, drop=("exp",)),
    "no iat": lambda app, sub: forge(app, sub=sub, drop=("iat",)),
    "no sub": lambda app, sub: forge(app, sub=sub, drop=("sub",)),
    "no jti": lambda app, sub: forge(app, sub=sub, drop=("jti",)),
    "no type": lambda app, sub: forge(app, sub=sub, drop=("type",)),
    "sub not a uuid": lambda app, _sub: forge(app, sub="admin"),
    "sub a number": lambda app, _sub: forge(app, sub=12),
    "unknown type": lambda app, sub: forge(app, sub=sub, type="id"),
    "exp a string": lambda app, sub: forge(app, sub=sub, exp="soon"),
    "iat in the future": lambda app, sub: forge(app, sub=sub, iat=int(time.time()) + 3600),
    "nbf in the future": lambda app, sub: forge(app, sub=sub, nbf=int(time.time()) + 3600),
    "scope not a list": lambda app, sub: forge(app, sub=sub, scope="admin"),
    "bad family": lambda app, sub: forge(app, sub=sub, fam="x"),
    "typ not JWT": lambda app, sub: forge(app, sub=sub, header={"typ": "at+jwt"}),
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_a_token_without_what_the_contract_requires_is_401(client, app, account, name):
    token = BAD_TOKENS[name](app, account.id)
    response = client.get("/api/me", headers=bearer(token))
    assert_refused(response)
    assert "token" in response.get_json()["error"]["message"].lower()


def test_a_hand_made_token_with_every_required_claim_is_accepted(client, app, account):
    """The forged tokens above fail for their one defect, not for being hand-made."""
    assert me(client, forge(app, sub=account.id)) == 200
