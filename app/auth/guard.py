"""Authentication for routes: who the caller is (read once per request), `authenticated`, the
principal.

The pipeline (app/core/pipeline.py) calls `identify` once per request: it decodes the bearer
token (signature, expiry; no I/O) and asks for two reads in the pipeline's one Redis round trip,
next to the rate-limit hit: the blocklist EXISTS over the token's jti and family, and the GET of
the user's cached state. `@authenticated` then only checks what was found, so a warm
authenticated request costs no further round trip; without Redis (or on a miss) it falls back
to the blocklist table and the user service. A deleted user's token is refused, and the admin
scope counts only while the user is still an admin.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import jwt as pyjwt
from flask import Flask, Request, current_app, g
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException

from app.auth.blocklist import KEY_PREFIX, TokenBlocklist, family_key
from app.auth.service import AuthService, check_claims, family_of, outlived_cutoff
from app.core.api import REQUIRED_SCOPE
from app.core.audit import security_event
from app.core.cache import app_cache, cache_key
from app.core.errors import InsufficientScope, Unauthenticated
from app.core.pipeline import identify_with
from app.core.redis_client import get_redis
from app.core.security import ADMIN_SCOPE, CurrentUser, Principal
from app.extensions import db
from app.users.cache import USER_KIND, UserSnapshot, snapshot
from app.users.service import UserService

F = TypeVar("F", bound=Callable[..., Any])
BEARER_AUTH: list[dict[str, list[str]]] = [{"bearerAuth": []}]
MAX_HEADER = 8192
_UNREAD = object()  # the cached user state was not fetched (no Redis, cache off, Redis failed)


def blocklist() -> TokenBlocklist:
    return TokenBlocklist(db.session(), get_redis(current_app.config["REDIS_URL"]))


def auth_service() -> AuthService:
    return AuthService.from_app()


class TokenCaller:
    """The caller of this request as its bearer token says (the pipeline's `Caller`)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.claims: dict[str, Any] | None = None
        self.problem: str | None = None  # why the token is refused, when it is
        self.revoked: bool | None = None  # from the round trip; None: not read
        self.user_entry: Any = _UNREAD
        self.user: CurrentUser | None = None
        self.verified = False
        if token is not None:
            try:
                self.claims = verified_claims(token)
            except pyjwt.ExpiredSignatureError:
                self.problem = "The token has expired."
            except (JWTExtendedException, pyjwt.PyJWTError, ValueError, KeyError):
                self.problem = "The token is not valid."
        self.subject: str | None = str(self.claims["sub"]) if self.claims else None

    def _keys(self) -> list[str]:
        if self.claims is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("claims is not set")
        family = family_of(self.claims)
        jti = str(self.claims.get("jti", ""))
        return [jti] if family is None else [jti, family_key(family)]

    def reads(self) -> list[tuple[Any, ...]]:
        if self.claims is None or not current_app.config.get("REDIS_URL"):
            return []
        if not blocklist().redis_ready():  # down, or owes revocations: the database answers
            return []
        commands: list[tuple[Any, ...]] = [("EXISTS", *(KEY_PREFIX + k for k in self._keys()))]
        cache = app_cache()
        if cache.enabled and not cache.owes_writes:
            commands.append(("GET", cache_key(USER_KIND, self.subject)))
        return commands

    def settle(self, replies: list[Any] | None) -> None:
        if not replies:
            return
        self.revoked = int(replies[0]) > 0
        if len(replies) > 1:
            self.user_entry = replies[1]

    def verify(self, *, refresh: bool = False) -> None:
        """Raise Unauthenticated unless the token is a live one of the right type, of a user
        that still exists; then `user` is that user's current state."""
        if self.claims is None:
            raise Unauthenticated(self.problem or "The token is not valid.")
        if self.claims.get("type") != ("refresh" if refresh else "access"):
            raise Unauthenticated("The token is not valid.")
        if self.verified:
            return
        revoked = self.revoked
        if revoked is None:  # not read in the round trip: one Redis call or one query
            revoked = blocklist().is_revoked(
                str(self.claims.get("jti", "")), family_of(self.claims)
            )
        if revoked:
            _revoked(self.claims)
        self.user = self._current_user()
        if self.user is None:
            raise Unauthenticated("The token's user no longer exists.")
        self.verified = True

    def principal(self) -> Principal | None:
        """The verified caller, or None when no token was sent; raises Unauthenticated."""
        if self.token is None:
            return None
        self.verify()
        if self.claims is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("claims is not set")
        if self.user is None:  # a call out of order: a bug, never a client's doing
            raise RuntimeError("user is not set")
        user = self.user
        raw_scopes = self.claims.get("scope")
        token_scopes = (
            {s for s in raw_scopes if isinstance(s, str)} if isinstance(raw_scopes, list) else set()
        )
        if not user.is_admin:
            token_scopes.discard(ADMIN_SCOPE)
        return Principal(user_id=user.id, public_id=user.public_id, scopes=frozenset(token_scopes))

    def is_valid(self) -> bool:
        """The full check (revocation, the user's current state) of an access token."""
        try:
            self.verify()
        except Unauthenticated:
            return False
        return True

    def _current_user(self) -> CurrentUser | None:
        try:
            public_id = uuid.UUID(str(self.subject))
        except ValueError:
            return None
        state: UserSnapshot | None = None
        if self.user_entry is not _UNREAD:
            cache = app_cache()  # decode verifies the entry's MAC: a forged one is a miss
            entry = cache.decode(cache_key(USER_KIND, self.subject), self.user_entry)
            if entry is not None:  # read in the round trip: the domain's own snapshot of it
                cache.note_read(USER_KIND, hit=True)
                state = snapshot(entry["d"], entry["v"])
        if state is None:
            state = UserService.from_app().token_state(public_id)
            if state is None:
                return None
        _check_cutoff(self.claims, state)
        return CurrentUser(state.owner_id, public_id, state.is_admin)


VERIFIED_TOKENS = 4096  # tokens whose signature this process has checked, remembered


def verified_claims(token: str) -> dict[str, Any]:
    """flask-jwt-extended's `decode_token`, memoised per app and process by the token's text.

    A token's signature and claims never change, so a client's next request with the same token
    skips the signature check and the three base64/JSON passes; its expiry is checked again on
    every use (`exp` is required by the decoder). Revocation is never memoised.
    """
    memo: dict[str, dict[str, Any]] = current_app.extensions.setdefault("auth.verified", {})
    claims = memo.get(token)
    if claims is not None:
        leeway = current_app.config.get("JWT_DECODE_LEEWAY", 0)
        leeway = leeway.total_seconds() if hasattr(leeway, "total_seconds") else leeway
        if float(claims["exp"]) + float(leeway) > time.time():
            return claims
        memo.pop(token, None)
        raise pyjwt.ExpiredSignatureError("Signature has expired")
    claims = decode_token(token)
    check_claims(token)  # required claims and their shapes: the decoder checks only some
    if "exp" in claims:  # only tokens that expire are remembered
        if len(memo) >= VERIFIED_TOKENS:
            memo.clear()  # simple bound: a burst of new tokens costs one decode each again
        memo[token] = claims
    return claims


def identify(request: Request) -> TokenCaller:
    """The pipeline's step 3: the bearer token's signature and expiry, nothing else."""
    header = request.headers.get("Authorization")
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return TokenCaller(None)  # no bearer credential: anonymous (401 where auth is required)
    token = token.strip()
    if not token or " " in token or len(header or "") > MAX_HEADER:
        caller = TokenCaller(None)
        caller.token, caller.problem = token, "The token is not valid."  # refused, never anonymous
        return caller
    return TokenCaller(token)


def register_auth(app: Flask) -> None:
    identify_with(app, identify)
    app.config.setdefault("JWT_ERROR_MESSAGE_KEY", "message")


def caller() -> TokenCaller:
    return cast(TokenCaller, g.caller)


def authenticated(
    *, optional: bool = False, refresh: bool = False, scope: str | None = None
) -> Callable[[F], F]:
    """Require (or, with `optional`, accept) a valid access token before the view runs; with
    `scope`, one that carries it (else 403 insufficient_scope). The route's one declaration of
    its scope: `operation` reads it for the OpenAPI document (`REQUIRED_SCOPE`)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found = caller()
            if found.token is None:
                if not optional:
                    raise Unauthenticated(
                        "Authentication is required: send Authorization: Bearer <token>."
                    )
            else:
                found.verify(refresh=refresh)
                if scope is not None:
                    require_scope(scope)
            return view(*args, **kwargs)

        setattr(wrapper, REQUIRED_SCOPE, scope)
        return cast(F, wrapper)

    return decorator


def require_scope(scope: str) -> None:
    """Refuse (403) a verified caller whose token lacks `scope` (GraphQL fields call it too)."""
    principal = current_principal()
    if principal is not None and not principal.has(scope):
        raise InsufficientScope(scope)


def current_claims() -> dict[str, Any]:
    """The verified token's claims (the view is @authenticated)."""
    found = caller()
    if not found.verified or found.claims is None:
        raise RuntimeError("view needs @authenticated")
    return found.claims


def current_user() -> CurrentUser:
    found = caller()
    if not found.verified or found.user is None:
        raise RuntimeError("view needs @authenticated")
    return found.user


def current_principal() -> Principal | None:
    """The caller @authenticated verified, or None (anonymous)."""
    found = g.get("caller")
    if found is None or not found.verified:
        return None
    return cast(Principal, found.principal())


def require_principal() -> Principal:
    principal = current_principal()
    if principal is None:  # only reachable if a view forgot @authenticated
        raise RuntimeError("view needs @authenticated")
    return principal


def _check_cutoff(claims: dict[str, Any] | None, state: UserSnapshot) -> None:
    """A password change since this token's login ended it (every login but the changer's)."""
    if claims is not None and outlived_cutoff(
        claims, state.tokens_cutoff_ms, state.tokens_kept_family
    ):
        raise Unauthenticated("The token was ended by a password change.")


def _revoked(claims: dict[str, Any]) -> None:
    kind = str(claims.get("type", ""))
    security_event(
        "revoked_token_used",
        user_id=str(claims.get("sub", "")),
        token_type=kind,
        jti=str(claims.get("jti", "")),
    )
    if kind == "refresh":
        # A spent refresh token presented again: revoke everything of that login.
        auth_service().refresh_token_reused(claims)
    raise Unauthenticated("The token has been revoked.")
