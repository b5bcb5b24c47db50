"""Auth hardening: the per-account login lock, token families (rotation, reuse, logout), and the
security events they log.

Runs on both backends: SQLite with the in-process counter store, and with DATABASE_URL/REDIS_URL
on PostgreSQL with the counters and the blocklist in Redis.
"""

from __future__ import annotations

import logging
import statistics
import time
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import limits.storage.memory
import limits.storage.redis
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_jwt_extended import create_access_token

from app import create_app
from app.auth.blocklist import FAMILY_PREFIX, TokenBlocklist
from app.auth.models import RevokedToken
from app.auth.throttle import (
    account_throttle,
    email_fingerprint,
    known_addresses,
    password_throttle,
    spread_throttle,
)
from app.core.redis_client import get_redis
from app.core.security import passwords
from app.extensions import db
from app.settings import ConfigError, Settings
from tests.conftest import (
    PASSWORD,
    REDIS_URL,
    assert_error,
    bearer,
    login,
    needs_redis,
    register,
    test_config,
    unique,
)

MAX_FAILURES = 5  # the default LOGIN_ACCOUNT_MAX_FAILURES, which the test config keeps
WRONG = "not the password"


# Helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_counters(app: Flask) -> None:
    """The session app's failure counters start empty (its memory store outlives a test)."""
    for throttle in (account_throttle, spread_throttle, known_addresses, password_throttle):
        throttle(app).reset_all()


@pytest.fixture
def make_app(app: Flask) -> Iterator[Callable[..., Flask]]:
    """Another app (another web process) on the same database and Redis, with config overrides."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        other = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], **overrides))
        made.append(other)
        return other

    yield make
    for other in made:
        with other.app_context():
            db.engine.dispose()
    # create_app configures the process-wide hasher: put the session app's (cheap) cost back.
    passwords.configure(app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_COST_KIB"])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """A fake clock for the failure counters (limits reads time.time() in Python, for its memory
    and Redis stores alike): `clock(seconds)` moves it on, without sleeping."""
    now = [time.time()]
    fake = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(limits.storage.memory, "time", fake)
    monkeypatch.setattr(limits.storage.redis, "time", fake)

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Callable[..., list[logging.LogRecord]]:
    """The security events logged so far (logger "app.security"), optionally of one kind."""
    caplog.set_level(logging.INFO, logger="app.security")

    def records(name: str | None = None) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "app.security" and (name is None or r.getMessage() == name)
        ]

    return records


def attempt(client: Any, email: str, password: str) -> Any:
    return client.post("/api/auth/login", json={"email": email, "password": password})


def throttled(response: Any) -> tuple[int, Any]:
    """What a client can see of a throttled login: a 429 that never says if the account exists."""
    assert_error(response, 429, "RATE_LIMITED")
    assert int(response.headers["Retry-After"]) >= 1
    return response.status_code, response.get_json()


def refusal(response: Any) -> tuple[int, Any, str | None]:
    """What a client can see of a refused login (everything but the request id)."""
    assert_error(response, 401, "UNAUTHENTICATED")
    return response.status_code, response.get_json(), response.headers.get("WWW-Authenticate")


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def refresh(client: Any, token: str) -> Any:
    return client.post("/api/auth/refresh", headers=bearer(token))


def me(client: Any, token: str) -> int:
    return int(client.get("/api/me", headers=bearer(token)).status_code)


def unknown_email() -> str:
    return f"{unique('nobody')}@example.com"


# The per-account lock --------------------------------------------------------------------------


@pytest.mark.parametrize("known", [True, False], ids=["real-email", "unknown-email"])
def test_an_address_is_throttled_after_n_failures_the_same_for_unknown_emails(
    client, events, known
):
    email = register(client)["email"] if known else unknown_email()
    baseline = refusal(attempt(client, unknown_email(), WRONG))  # a plain wrong login
    stranger = unknown_email()
    for _ in range(MAX_FAILURES):
        attempt(client, stranger, WRONG)
    expected = throttled(attempt(client, stranger, WRONG))  # an unknown email, throttled

    for _ in range(MAX_FAILURES):
        assert refusal(attempt(client, email, WRONG)) == baseline
    # Throttled: refused without checking the password, as for an email nobody has.
    assert throttled(attempt(client, email, WRONG)) == expected
    assert throttled(attempt(client, email, PASSWORD)) == expected
    assert throttled(attempt(client, email.upper(), PASSWORD)) == expected  # counted per email

    fingerprint = email_fingerprint(email, client.application.config["SECRET_KEY"])[:16]
    reasons = [r.reason for r in events("login_failed") if r.email_hash == fingerprint]
    assert reasons == ["bad_credentials"] * MAX_FAILURES + ["address_throttled"] * 3
    (locked,) = [r for r in events("login_throttled") if r.email_hash == fingerprint]
    assert (locked.scope, locked.failures) == ("address", MAX_FAILURES)
    assert locked.email_hash == fingerprint
    assert (getattr(locked, "user_id", None) is not None) is known


def test_the_lock_is_per_account_and_address(client, make_account):
    locked, other = make_account(), make_account()
    for _ in range(MAX_FAILURES):
        attempt(client, locked.email, WRONG)
    assert attempt(client, locked.email, PASSWORD).status_code == 429
    assert login(client, other.email)["token_type"] == "Bearer"
    # Tokens issued before the lock keep working: the lock is on logging in, not on sessions.
    assert me(client, locked.tokens["access_token"]) == 200


def test_a_successful_login_resets_the_count(client, account):
    for _ in range(MAX_FAILURES - 1):
        attempt(client, account.email, WRONG)
    login(client, account.email)
    for _ in range(MAX_FAILURES - 1):
        attempt(client, account.email, WRONG)
    login(client, account.email)  # 8 failures in the window, never 5 in a row: not locked


def test_the_lock_expires(make_app, events):
    other = make_app(LOGIN_ACCOUNT_WINDOW_SECONDS=1)
    client = other.test_client()
    email = register(client)["email"]
    for _ in range(MAX_FAILURES):
        attempt(client, email, WRONG)
    assert attempt(client, email, PASSWORD).status_code == 429
    time.sleep(1.1)
    assert login(client, email)["token_type"] == "Bearer"
    assert len(events("login_throttled")) == 1


def test_the_lock_lifts_as_the_oldest_failure_leaves_the_window(client, account, clock, events):
    """A moving window over failures only: refused attempts while locked are not counted, so
    they never extend the lock; it lifts when the oldest of the N failures is a window old."""
    window = client.application.config["LOGIN_ACCOUNT_WINDOW_SECONDS"]
    for _ in range(MAX_FAILURES):
        attempt(client, account.email, WRONG)
        clock(1)
    clock(window / 2)
    assert attempt(client, account.email, WRONG).status_code == 429  # locked: not counted
    clock(window / 2 - MAX_FAILURES - 1)  # 1 s before the first failure leaves the window
    assert attempt(client, account.email, PASSWORD).status_code == 429
    clock(2)
    assert login(client, account.email)["token_type"] == "Bearer"
    reasons = [r.reason for r in events("login_failed")]
    assert reasons == ["bad_credentials"] * MAX_FAILURES + ["address_throttled"] * 2


def test_zero_max_failures_turns_the_lock_off(make_app):
    client = make_app(LOGIN_ACCOUNT_MAX_FAILURES=0).test_client()
    email = register(client)["email"]
    for _ in range(MAX_FAILURES * 2):
        attempt(client, email, WRONG)
    assert login(client, email)["token_type"] == "Bearer"


def test_the_lock_settings_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("LOGIN_ACCOUNT_MAX_FAILURES", raising=False)
    monkeypatch.delenv("LOGIN_ACCOUNT_WINDOW_SECONDS", raising=False)
    defaults = Settings.from_env("testing")
    assert defaults.login_account_max_failures == 5
    assert defaults.login_account_window_seconds == 900
    monkeypatch.setenv("LOGIN_ACCOUNT_MAX_FAILURES", "3")
    monkeypatch.setenv("LOGIN_ACCOUNT_WINDOW_SECONDS", "60")
    cfg = Settings.from_env("testing")
    assert (cfg.login_account_max_failures, cfg.login_account_window_seconds) == (3, 60)
    monkeypatch.setenv("LOGIN_ACCOUNT_WINDOW_SECONDS", "0")
    with pytest.raises(ConfigError, match="LOGIN_ACCOUNT_WINDOW_SECONDS"):
        Settings.from_env("testing")


@needs_redis
def test_the_lock_is_shared_by_every_web_process(client, make_app):
    email = register(client)["email"]
    for _ in range(MAX_FAILURES):
        attempt(client, email, WRONG)
    other = make_app().test_client()
    assert attempt(other, email, PASSWORD).status_code == 429


def test_counter_store_down_fails_open(make_app, events):
    """Redis unreachable: the per-account lock is off (logged), logins still work."""
    client = make_app(REDIS_URL="redis://127.0.0.1:1/0").test_client()
    email = register(client)["email"]
    for _ in range(MAX_FAILURES + 1):
        assert attempt(client, email, WRONG).status_code == 401
    assert login(client, email)["token_type"] == "Bearer"
    assert {r.reason for r in events("login_failed")} == {"bad_credentials"}
    unavailable = events("login_throttle_unavailable")
    assert unavailable
    assert all(r.fail_open is True for r in unavailable)


def test_timing_does_not_tell_unknown_wrong_and_locked_apart(client, make_app):
    """Every refused login costs one password hash: an unknown email, a wrong password and a
    locked account (refused without checking the password) take about the same time.

    Argon2's cost is raised above the testing default so that the hash dominates a request;
    medians of interleaved attempts are compared, loosely (within a factor of 2), and each must
    be at least most of one hash's time, which a path that skipped the hash would not be."""
    cost = {"ARGON2_TIME_COST": 2, "ARGON2_MEMORY_COST_KIB": 8192}
    open_app = make_app(LOGIN_ACCOUNT_MAX_FAILURES=10_000, **cost)
    lock_app = make_app(LOGIN_ACCOUNT_MAX_FAILURES=1, **cost)
    unlocked, locking = open_app.test_client(), lock_app.test_client()
    email = register(unlocked)["email"]  # hashed at the raised cost, as the dummy hash is
    attempt(locking, email, WRONG)  # one failure locks it in lock_app (separate counters)
    assert attempt(locking, email, PASSWORD).status_code == 429

    def timed(call: Callable[[], Any]) -> float:
        start = time.perf_counter()
        response = call()
        elapsed = time.perf_counter() - start
        assert response.status_code in (401, 429)
        return elapsed

    def one_hash() -> float:
        start = time.perf_counter()
        passwords.verify(None, WRONG)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"unknown": [], "wrong": [], "locked": [], "hash": []}
    for _ in range(2):  # warm-up
        attempt(unlocked, unknown_email(), WRONG)
        attempt(unlocked, email, WRONG)
    for _ in range(15):
        samples["unknown"].append(timed(lambda: attempt(unlocked, unknown_email(), WRONG)))
        samples["wrong"].append(timed(lambda: attempt(unlocked, email, WRONG)))
        samples["locked"].append(timed(lambda: attempt(locking, email, PASSWORD)))
        samples["hash"].append(one_hash())
    median = {name: statistics.median(values) for name, values in samples.items()}

    for name in ("unknown", "locked"):
        ratio = median[name] / median["wrong"]
        assert 0.5 < ratio < 2.0, (name, median)
    for name in ("unknown", "wrong", "locked"):
        assert median[name] > 0.7 * median["hash"], (name, median)


# Token families --------------------------------------------------------------------------------


def test_every_token_of_a_login_carries_its_family(client, account):
    family = claims_of(account.tokens["access_token"])["fam"]
    assert isinstance(family, str)
    assert len(family) == 32
    int(family, 16)
    assert claims_of(account.tokens["refresh_token"])["fam"] == family
    rotated = refresh(client, account.tokens["refresh_token"]).get_json()["data"]
    assert claims_of(rotated["access_token"])["fam"] == family
    assert claims_of(rotated["refresh_token"])["fam"] == family
    again = refresh(client, rotated["refresh_token"]).get_json()["data"]
    assert claims_of(again["refresh_token"])["fam"] == family
    assert claims_of(login(client, account.email)["access_token"])["fam"] != family


def test_refresh_reuse_revokes_the_family(client, account, events):
    first = account.tokens
    other_login = login(client, account.email)
    rotated = refresh(client, first["refresh_token"])
    assert rotated.status_code == 200
    second = rotated.get_json()["data"]
    assert me(client, second["access_token"]) == 200

    # The spent refresh token again (a thief, or a confused client): 401, and the family dies.
    assert_error(refresh(client, first["refresh_token"]), 401, "UNAUTHENTICATED")
    assert me(client, second["access_token"]) == 401  # the rotation's new access token too
    assert me(client, first["access_token"]) == 401
    assert_error(refresh(client, second["refresh_token"]), 401, "UNAUTHENTICATED")
    # Another login of the same user is another family: untouched.
    assert me(client, other_login["access_token"]) == 200
    assert refresh(client, other_login["refresh_token"]).status_code == 200

    (reused,) = events("refresh_token_reused")  # once: later refusals find it revoked already
    assert reused.user_id == account.id
    assert reused.family == claims_of(first["refresh_token"])["fam"]
    used = events("revoked_token_used")
    assert used
    assert {r.user_id for r in used} == {account.id}


def test_logout_revokes_the_whole_login(client, account, events):
    other_login = login(client, account.email)
    rotated = refresh(client, account.tokens["refresh_token"]).get_json()["data"]

    # Logging out with the login's first access token ends the rotated pair as well.
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    assert me(client, account.tokens["access_token"]) == 401
    assert me(client, rotated["access_token"]) == 401
    assert_error(refresh(client, rotated["refresh_token"]), 401, "UNAUTHENTICATED")
    assert_error(refresh(client, account.tokens["refresh_token"]), 401, "UNAUTHENTICATED")
    # Not another login's tokens.
    assert me(client, other_login["access_token"]) == 200
    assert refresh(client, other_login["refresh_token"]).status_code == 200
    # A refresh token refused because its family was logged out is not a "reuse".
    assert events("refresh_token_reused") == []


def test_logout_with_a_token_without_a_family(app, client, account):
    """A token minted without `fam` (as before families existed) is revoked by its jti alone."""
    with app.app_context():
        legacy = create_access_token(identity=account.id, additional_claims={"scope": []})
    assert client.post("/api/auth/logout", headers=bearer(legacy)).status_code == 204
    assert me(client, legacy) == 401
    assert me(client, account.tokens["access_token"]) == 200


def test_revoked_family_survives_redis_loss_in_the_database(app, client, account, make_app):
    """The family revocation is a database row too: a process without Redis refuses it."""
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    with app.app_context():
        keys = db.session.scalars(sa.select(RevokedToken.jti)).all()
        family_rows = [k for k in keys if k.startswith(FAMILY_PREFIX)]
        db.session.remove()
    assert family_rows == [FAMILY_PREFIX + claims_of(account.tokens["access_token"])["fam"]]
    no_redis = make_app(REDIS_URL=None).test_client()
    assert_error(refresh(no_redis, account.tokens["refresh_token"]), 401, "UNAUTHENTICATED")


class _CountingRedis:
    """A Redis client that counts the commands sent through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return attr(*args, **kwargs)

        return call


def test_blocklist_check_is_one_query_without_redis(app):
    jti, family = str(uuid.uuid4()), uuid.uuid4().hex
    statements: list[str] = []
    with app.app_context():
        blocklist = TokenBlocklist(db.session(), None)

        def count(*args: Any) -> None:
            statements.append(args[2])

        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            assert blocklist.is_revoked(jti, family) is False
            assert len(statements) == 1
            blocklist.revoke_family(family, datetime.now(UTC) + timedelta(hours=1))
            db.session.commit()
            statements.clear()
            assert blocklist.is_revoked(jti, family) is True
            assert blocklist.is_revoked(jti) is False
            assert len(statements) == 2
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
            db.session.remove()


@needs_redis
def test_blocklist_check_is_one_redis_round_trip(app, client, account):
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    claims = claims_of(account.tokens["refresh_token"])
    counting = _CountingRedis(get_redis(REDIS_URL))
    with app.app_context():
        blocklist = TokenBlocklist(db.session(), counting)  # type: ignore[arg-type]
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        sa.event.listen(db.engine, "before_cursor_execute", count)
        try:
            # The refresh token's own jti is not revoked; its family is.
            assert blocklist.is_revoked(claims["jti"], claims["fam"]) is True
            assert blocklist.is_revoked(str(uuid.uuid4()), uuid.uuid4().hex) is False
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", count)
            db.session.remove()
    assert counting.calls == ["exists", "exists"]
    assert statements == []


# Security events -------------------------------------------------------------------------------


def test_forbidden_is_a_security_event(client, make_account, events):
    caller, owner = make_account(), make_account()
    response = client.patch(f"/api/users/{owner.id}", json={"bio": "x"}, headers=caller.headers)
    assert_error(response, 403, "FORBIDDEN")
    (event,) = events("forbidden")
    assert event.user_id == caller.id
    assert event.method == "PATCH"
    assert event.path == f"/api/users/{owner.id}"


def test_security_events_carry_no_secret(client, make_account, events):
    """A whole hostile session, then every event line is checked for passwords, tokens, the
    Authorization header and the raw email."""
    secret_password = "S3cret-" + uuid.uuid4().hex
    victim = register(client, password=secret_password)
    intruder = make_account()
    first = login(client, victim["email"], secret_password)
    for _ in range(MAX_FAILURES + 1):
        attempt(client, victim["email"], secret_password + "x")
    attempt(client, victim["email"].upper(), secret_password)  # locked
    attempt(client, unknown_email(), secret_password)
    account_throttle(client.application).reset_all()  # (lift the lock)
    second = login(client, victim["email"], secret_password)
    rotated = refresh(client, first["refresh_token"]).get_json()["data"]
    refresh(client, first["refresh_token"])  # reuse
    client.patch(f"/api/users/{victim['id']}", json={"bio": "x"}, headers=intruder.headers)
    client.post("/api/auth/logout", headers=bearer(second["access_token"]))
    me(client, second["access_token"])

    logged = events()
    names = {r.getMessage() for r in logged}
    assert {
        "login_failed",
        "login_throttled",
        "refresh_token_reused",
        "revoked_token_used",
        "forbidden",
    } <= names
    tokens = [
        pair[kind]
        for pair in (first, second, rotated)
        for kind in ("access_token", "refresh_token")
    ]
    secrets = [
        secret_password,
        victim["email"],
        victim["email"].upper(),
        "Bearer",
        *tokens,
        *(token.split(".")[2] for token in tokens),  # the signatures alone
    ]
    for record in logged:
        text = repr(vars(record)) + record.getMessage()
        for secret in secrets:
            assert secret not in text, (record.getMessage(), secret)
        assert not {"password", "token", "authorization", "email"} & set(vars(record))
