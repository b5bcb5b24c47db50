"""Guessing and enumeration (issue #13 items 3, 4 and 6, contract §3): `current_password`
guesses are limited like logins; failed logins never lock the owner out (counted per address
and per account, see docs/decisions/0015-login-throttling-without-lockout.md); email changes
are limited like registrations, since a 409 tells whether an email is taken."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from app.auth.throttle import email_fingerprint
from tests.factories import PASSWORD, login, register
from tests.support.assertions import assert_error

WRONG = "not the password"
NEW_PASSWORD = "a brand new passphrase"
MAX_FAILURES = 5  # the default LOGIN_ACCOUNT_MAX_FAILURES, which the test config keeps


@pytest.fixture(autouse=True)
def _fresh_counters(app: Flask) -> None:
    """The session app's memory counters outlive a test (Redis ones are reset by conftest)."""
    for name, throttle in list(app.extensions.items()):
        if name.startswith("postboard.account_throttle"):  # every counter of app/auth/throttle
            throttle.reset_all()


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    caplog.set_level(logging.INFO, logger="app.security")
    return lambda name: [
        r for r in caplog.records if r.name == "app.security" and r.getMessage() == name
    ]


def from_address(address: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": address}}


def attempt(client: Any, email: str, password: str, address: str = "198.51.100.1") -> Any:
    body = {"email": email, "password": password}
    return client.post("/api/auth/login", json=body, **from_address(address))


def assert_limited(response: Any) -> None:
    assert_error(response, 429, "RATE_LIMITED")
    assert int(response.headers["Retry-After"]) >= 1


# Item 3: current_password guesses ---------------------------------------------------------------


def test_current_password_guesses_are_limited_like_logins(client, account, events):
    def change(current: str) -> Any:
        body = {"password": NEW_PASSWORD, "current_password": current}
        return client.patch(f"/api/users/{account.id}", json=body, headers=account.headers)

    for _ in range(MAX_FAILURES):
        assert_error(change(WRONG), 403, "FORBIDDEN")
    # The right password no longer helps a guesser: refused until the window moves on.
    assert_limited(change(PASSWORD))
    assert_limited(change(WRONG))
    assert login(client, account.email)["token_type"] == "Bearer"  # the password is unchanged
    (throttled, *_) = events("password_change_throttled")
    assert throttled.user_id == account.id


def test_a_right_current_password_clears_the_count(client, account):
    def change(current: str, new: str) -> Any:
        body = {"password": new, "current_password": current}
        return client.patch(f"/api/users/{account.id}", json=body, headers=account.headers)

    for _ in range(MAX_FAILURES - 1):
        assert change(WRONG, NEW_PASSWORD).status_code == 403
    assert change(PASSWORD, NEW_PASSWORD).status_code == 200
    for _ in range(MAX_FAILURES - 1):
        assert change(WRONG, PASSWORD).status_code == 403
    assert change(NEW_PASSWORD, PASSWORD).status_code == 200


# Item 4: no lockout by failing on purpose --------------------------------------------------------


def test_failures_from_one_address_do_not_lock_the_owner_out(client, make_account, events):
    victim = make_account()
    attacker, home = "203.0.113.66", "192.0.2.10"
    for _ in range(MAX_FAILURES):
        assert_error(attempt(client, victim.email, WRONG, attacker), 401, "UNAUTHENTICATED")
    # The attacker's address is refused even with the right password...
    assert_limited(attempt(client, victim.email, PASSWORD, attacker))
    assert_limited(attempt(client, victim.email.upper(), WRONG, attacker))
    # ... and the owner, from their own address, logs in.
    response = attempt(client, victim.email, PASSWORD, home)
    assert response.status_code == 200, response.get_json()
    # The owner is told (a security event naming the account by its keyed hash).
    fingerprint = email_fingerprint(victim.email, client.application.config["SECRET_KEY"])[:16]
    (told,) = events("login_throttled")
    assert (told.scope, told.email_hash, told.user_id) == ("address", fingerprint, victim.id)


def test_a_distributed_guess_is_stopped_but_the_owner_gets_in(make_app, events):
    """One failure each from many addresses: past the per-account threshold only addresses
    that logged in to the account before may still try."""
    client = make_app(LOGIN_ACCOUNT_SPREAD_MAX_FAILURES=6).test_client()
    email = register(client)["email"]
    home = "192.0.2.10"
    assert attempt(client, email, PASSWORD, home).status_code == 200  # the owner's address
    for n in range(6):
        assert attempt(client, email, WRONG, f"203.0.113.{n + 1}").status_code == 401
    # Every new address is refused now, whatever it sends (the right password included).
    assert_limited(attempt(client, email, PASSWORD, "203.0.113.200"))
    assert_limited(attempt(client, email, WRONG, "203.0.113.201"))
    assert attempt(client, email, PASSWORD, home).status_code == 200
    assert [r.scope for r in events("login_throttled")] == ["account"]
    # Other accounts are untouched.
    other = register(client)["email"]
    assert attempt(client, other, PASSWORD, "203.0.113.200").status_code == 200


# Item 6: email changes are limited like registrations ------------------------------------------


@pytest.fixture
def limited(make_app: Callable[..., Flask]) -> Any:
    """A web process with rate limits on and a registration limit of 3 an hour."""
    return make_app(RATELIMIT_ENABLED=True, RATELIMIT_REGISTER="3/hour").test_client()


def patch(client: Any, account: Any, address: str = "198.51.100.7", **body: Any) -> Any:
    return client.patch(
        f"/api/users/{account.id}", json=body, headers=account.headers, **from_address(address)
    )


def test_email_changes_are_limited_per_user(client, limited, make_account, events):
    me, taken = make_account(), [register(client)["email"] for _ in range(3)]
    for email in taken:  # each 409 answers whether the email is taken
        assert_error(patch(limited, me, email=email), 409, "CONFLICT")
    assert_limited(patch(limited, me, email=f"x{taken[0]}"))
    assert_limited(patch(limited, me, "198.51.100.99", email=f"y{taken[0]}"))  # any address
    # Other changes go on.
    assert patch(limited, me, display_name="Still here").status_code == 200
    assert events("email_change_throttled")


def test_email_changes_are_limited_per_address(client, limited, make_account):
    first, second = make_account(), make_account()
    for n in range(3):
        assert patch(limited, first, email=f"first{n}.{first.email}").status_code == 200
    assert_limited(patch(limited, second, email=f"new.{second.email}"))  # same address
    assert patch(limited, second, "198.51.100.8", email=f"new.{second.email}").status_code == 200
    assert login(client, f"new.{second.email}")["token_type"] == "Bearer"


def test_unchanged_email_is_not_counted(limited, make_account):
    me = make_account()
    for _ in range(5):
        response = patch(limited, me, email=me.email.upper(), bio="same email")
        assert response.status_code == 200, response.get_json()
