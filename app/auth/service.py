"""Login (with the per-account lock), token refresh with rotation, logout, token families.

Every login starts a token *family* (the `fam` claim, a random uuid hex) that its access and
refresh tokens carry, and every pair rotated from them too. Refresh spends the refresh token it is
called with; presenting a refresh token that was already spent (a replay: it was stolen, or the
client is confused) revokes the whole family, so whoever holds its newer tokens is logged out too.
Logout revokes the access token it is called with and its family.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.blocklist import TokenBlocklist
from app.auth.throttle import (
    AccountThrottle,
    account_throttle,
    email_fingerprint,
    known_addresses,
    spread_throttle,
)
from app.core.audit import security_event
from app.core.errors import RateLimited, Unauthenticated
from app.core.redis_client import get_redis
from app.core.security import ADMIN_SCOPE, USER_SCOPES, CurrentUser, passwords
from app.core.text import normalise_email
from app.extensions import db
from app.users.models import User
from app.users.repository import UserRepository

BAD_CREDENTIALS = "Invalid email or password."
THROTTLED = "Too many failed logins for this account from here: try again later."
TOKEN_REVOKED = "The token has been revoked."  # noqa: S105  # nosec B105 # a message
FAMILY_CLAIM = "fam"
CLIENT_CLAIM = "client_id"  # on the tokens issued to an OAuth app (app/oauth/)
_FAMILY_RE = re.compile(r"[0-9a-f]{32}")
EMAIL_HASH_CHARS = 16  # of the keyed hash, in log lines: enough to correlate, not to reverse


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret


def scopes_for(user: User | CurrentUser) -> list[str]:
    """A first-party login's scopes: every user scope, and `admin` for admins (contract §9)."""
    return [*USER_SCOPES, ADMIN_SCOPE] if user.is_admin else list(USER_SCOPES)


def new_family() -> str:
    """A UUIDv7 in hex: its first 48 bits are the login's time in milliseconds, so a password
    change can tell the logins made before it from those made after, finer than `iat`'s seconds."""
    value = (int(time.time() * 1000) & (2**48 - 1)) << 80
    value |= 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62 | secrets.randbits(62)
    return f"{value:032x}"


def family_started_ms(family: str | None) -> int | None:
    """When a family's login happened (ms), or None for a family id that carries no time."""
    if family is None or family[12] != "7":  # only UUIDv7 ids carry a time
        return None
    return int(family[:12], 16)


def outlived_cutoff(claims: dict[str, Any], cutoff_ms: int | None, kept: str | None) -> bool:
    """True when a password change at `cutoff_ms` ended this token's login: every login but the
    one that made the change (`kept`) and those started after it. A token without a timed family
    is judged by `iat` (whole seconds): one issued in the change's second is ended too."""
    if cutoff_ms is None:
        return False
    family = family_of(claims)
    if family is not None and family == kept:
        return False
    started = family_started_ms(family)
    if started is not None:
        return started <= cutoff_ms
    return int(claims["iat"]) <= cutoff_ms // 1000


_TOKEN_TYPES = ("access", "refresh")


def check_claims(token: str) -> None:
    """Raise ValueError unless the token has exactly what the contract allows: `sub` (a user
    uuid), `iat`, `exp`, `jti`, `type`, a `JWT` typ header when any. The signature, `exp` and
    `nbf` were checked by the decoder; this reads the raw claims (the decoder fills defaults)."""
    header = jwt.get_unverified_header(token)
    if header.get("typ", "JWT") != "JWT":
        raise ValueError("typ")
    raw = jwt.decode(token, options={"verify_signature": False})
    for name in ("sub", "iat", "exp", "jti", "type"):
        if name not in raw:
            raise ValueError(f"missing {name}")
    if not isinstance(raw["sub"], str) or str(uuid.UUID(raw["sub"])) != raw["sub"].lower():
        raise ValueError("sub")
    for name in ("iat", "exp", "nbf"):
        if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], int | float)):
            raise ValueError(name)
    if raw["iat"] > time.time() + 60:  # issued in the future: not by us (a minute of clock skew)
        raise ValueError("iat")
    if raw["type"] not in _TOKEN_TYPES or not isinstance(raw["jti"], str) or not raw["jti"]:
        raise ValueError("type/jti")
    scope = raw.get("scope", [])
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise ValueError("scope")
    if FAMILY_CLAIM in raw and family_of(raw) is None:
        raise ValueError(FAMILY_CLAIM)
    if CLIENT_CLAIM in raw and not isinstance(raw[CLIENT_CLAIM], str):
        raise ValueError(CLIENT_CLAIM)


def family_of(claims: dict[str, Any]) -> str | None:
    """The token's family id, or None for a token issued without one (before families existed,
    or minted by hand): such a token is checked by its jti alone."""
    value = claims.get(FAMILY_CLAIM)
    return value if isinstance(value, str) and _FAMILY_RE.fullmatch(value) else None


class AuthService:
    def __init__(
        self,
        session: Session,
        *,
        blocklist: TokenBlocklist,
        throttle: AccountThrottle,
        spread: AccountThrottle,
        known: AccountThrottle,
        access_ttl: int,
        refresh_ttl: int,
        email_secret: str,
    ) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.blocklist = blocklist
        self.throttle = throttle  # failed logins per (email, address)
        self.spread = spread  # failed logins per email, from anywhere
        self.known = known  # addresses that logged in to an email before
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.email_secret = email_secret

    # Login -------------------------------------------------------------------------------------

    @classmethod
    def from_app(cls) -> AuthService:
        """The service on this app context's session, blocklist, throttle and token lifetimes
        (routes, the guard and the CLI all build it here)."""
        config = current_app.config
        return cls(
            db.session(),
            blocklist=TokenBlocklist(db.session(), get_redis(config["REDIS_URL"])),
            throttle=account_throttle(),
            spread=spread_throttle(),
            known=known_addresses(),
            access_ttl=int(config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
            refresh_ttl=int(config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds()),
            email_secret=config["SECRET_KEY"],
        )

    def login(self, email: str, password: str, address: str = "unknown") -> TokenPair:
        """A first-party login: `authenticate`, then a new token family."""
        return self._issue(self.authenticate(email, password, address), new_family())

    def authenticate(self, email: str, password: str, address: str = "unknown") -> User:
        """The user these credentials name (POST /api/auth/login, the OAuth sign-in page).

        One answer for every failure (unknown email, wrong password), each after exactly one
        password hash's work, so neither the answer nor its timing tells them apart. Failures
        are counted per (email, address) and per email (app/auth/throttle.py): a throttled
        attempt is a 429 whose password is never checked, whether or not the account exists."""
        email = normalise_email(email)  # the form registration stored (fullwidth letters as ASCII)
        account = email_fingerprint(email, self.email_secret)
        pair = f"{account}:{address}"
        user = self.users.get_by_email(email)
        who: dict[str, str] = {"email_hash": account[:EMAIL_HASH_CHARS]}
        if user is not None:
            who["user_id"] = str(user.public_id)
        refused = self._throttled(account, pair)
        if refused is not None:
            passwords.verify(None, password)  # the same work as checking it
            security_event("login_failed", reason=refused, **who)
            limiter = self.throttle if refused == "address_throttled" else self.spread
            wait = limiter.retry_after(pair if limiter is self.throttle else account)
            raise RateLimited(THROTTLED, headers={"Retry-After": str(wait)})
        # Verify against a dummy hash for unknown emails: same work, same answer, no enumeration.
        valid = passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            security_event("login_failed", reason="bad_credentials", **who)
            self._count_failure(account, pair, who)
            raise Unauthenticated(BAD_CREDENTIALS)
        self.throttle.reset(pair)  # a successful login starts this address's count afresh
        self.known.hit(pair)  # and lets it in while the email is under a spread attack
        return user

    def _throttled(self, account: str, pair: str) -> str | None:
        """Why this attempt is refused unchecked, or None: this address used up its failures
        for the email, or the email did from everywhere and this address never logged in."""
        if self.throttle.is_locked(pair):
            return "address_throttled"
        if self.spread.is_locked(account) and not self.known.is_locked(pair):
            return "account_throttled"
        return None

    def _count_failure(self, account: str, pair: str, who: dict[str, str]) -> None:
        """Count a failed login; tell the account's owner (a security event) when a limit is
        reached."""
        window = {"window_seconds": self.throttle.window_seconds}
        if self.throttle.record_failure(pair):
            security_event(
                "login_throttled",
                scope="address",
                failures=self.throttle.max_failures,
                **window,
                **who,
            )
        if self.spread.record_failure(account):
            security_event(
                "login_throttled",
                scope="account",
                failures=self.spread.max_failures,
                **window,
                **who,
            )

    # Refresh, reuse, logout --------------------------------------------------------------------

    def refresh(self, user: CurrentUser, claims: dict[str, Any]) -> TokenPair:
        """Rotate: the presented refresh token is revoked and a new pair of its family issued.
        An app's refresh token (`client_id`) rotates only at /oauth/token, with its own scopes."""
        if CLIENT_CLAIM in claims:
            raise Unauthenticated("An app's refresh token is refreshed at /oauth/token.")
        self._spend(claims)
        return self._issue(user, family_of(claims) or new_family())

    def refresh_token_reused(self, claims: dict[str, Any]) -> bool:
        """A revoked refresh token was presented: revoke its whole family. True if this call
        revoked it (False when it was revoked already, or the token has no family)."""
        family = family_of(claims)
        if family is None:
            return False
        expires_at = self._family_expiry(claims)
        try:
            if not self.blocklist.revoke_family(family, expires_at):
                return False
            self.session.commit()
        except IntegrityError:  # a concurrent request revoked it first
            self.session.rollback()
            return False
        self.blocklist.mirror_family(family, expires_at)
        security_event("refresh_token_reused", user_id=str(claims.get("sub", "")), family=family)
        return True

    def logout(self, claims: dict[str, Any]) -> None:
        """Revoke the access token and its family (the login's refresh token dies with it)."""
        family = family_of(claims)
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        family_expires_at = self._family_expiry(claims)
        for attempt in range(2):
            try:
                if not self.blocklist.revoke(claims["jti"], expires_at):
                    raise Unauthenticated(TOKEN_REVOKED)
                if family is not None:
                    self.blocklist.revoke_family(family, family_expires_at)
                self.session.commit()
                break
            except IntegrityError:
                # A concurrent logout revoked this token (then the retry answers 401) or another
                # token of the same family (then the retry revokes just this one).
                self.session.rollback()
                if attempt:
                    raise Unauthenticated(TOKEN_REVOKED) from None
        self.blocklist.mirror(claims["jti"], expires_at)
        if family is not None:
            self.blocklist.mirror_family(family, family_expires_at)

    # Internals ---------------------------------------------------------------------------------

    def _issue(self, user: User | CurrentUser, family: str) -> TokenPair:
        return self.issue(user, family, scopes_for(user))

    def issue(
        self,
        user: User | CurrentUser,
        family: str,
        scopes: list[str],
        client_id: str | None = None,
    ) -> TokenPair:
        """An access and a refresh token of `family` carrying `scopes` (and, for an app's tokens,
        its `client_id`): the one place the service's JWTs are minted."""
        identity = str(user.public_id)
        claims: dict[str, Any] = {"scope": scopes, FAMILY_CLAIM: family}
        if client_id is not None:
            claims[CLIENT_CLAIM] = client_id
        access = create_access_token(identity=identity, additional_claims=claims)
        refresh = create_refresh_token(identity=identity, additional_claims=claims)
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=self.access_ttl)

    def spend_refresh(self, claims: dict[str, Any]) -> None:
        """Spend a refresh token once (an app's, at /oauth/token); Unauthenticated on reuse."""
        self._spend(claims)

    def _family_expiry(self, claims: dict[str, Any]) -> datetime:
        """No token of the family outlives this: each was issued by now, with at most the
        refresh lifetime (or it is the token in hand, whose own expiry counts too)."""
        latest = datetime.now(UTC) + timedelta(seconds=self.refresh_ttl)
        return max(latest, datetime.fromtimestamp(claims["exp"], UTC))

    def _spend(self, claims: dict[str, Any]) -> None:
        """Spend the refresh token exactly once: a concurrent request that revoked it first wins,
        so a refresh token can never be rotated into two pairs (and no clash is ever a 500).

        The loser of such a race is a reuse like any other: two parties presented one refresh
        token, and the server cannot tell a client's double submit from a thief racing it, so
        the family is revoked (the winner's new pair included) and both must log in again. A
        replay after the token was spent is caught earlier, by the blocklist check, to the same
        effect."""
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        try:
            spent = self.blocklist.revoke(claims["jti"], expires_at)
            if spent:
                self.session.commit()
        except IntegrityError:
            self.session.rollback()
            spent = False
        if not spent:
            self.refresh_token_reused(claims)
            raise Unauthenticated(TOKEN_REVOKED)
        self.blocklist.mirror(claims["jti"], expires_at)
