"""Authentication for routes: the JWT callbacks, the `authenticated` decorator, the principal.

Tokens are checked against the user's current state on every request: a deleted user's token is
refused, and the admin scope counts only while the user is still an admin.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app
from flask_jwt_extended import get_current_user, get_jwt, verify_jwt_in_request

from app.auth.blocklist import TokenBlocklist
from app.auth.service import AuthService, family_of
from app.core.audit import security_event
from app.core.errors import error_response
from app.core.redis_client import get_redis
from app.core.security import ADMIN_SCOPE, CurrentUser, Principal
from app.extensions import db, jwt
from app.users.service import UserService

F = TypeVar("F", bound=Callable[..., Any])
BEARER_AUTH: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def blocklist() -> TokenBlocklist:
    return TokenBlocklist(db.session(), get_redis(current_app.config["REDIS_URL"]))


def auth_service() -> AuthService:
    return AuthService.from_app()


def authenticated(*, optional: bool = False, refresh: bool = False) -> Callable[[F], F]:
    """Require (or, with `optional`, accept) a valid access token before the view runs."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            verify_jwt_in_request(optional=optional, refresh=refresh)
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator


def current_principal() -> Principal | None:
    claims = get_jwt()
    if not claims:
        return None
    user = cast(CurrentUser, get_current_user())
    raw_scopes = claims.get("scope")
    token_scopes = (
        {s for s in raw_scopes if isinstance(s, str)} if isinstance(raw_scopes, list) else set()
    )
    if not user.is_admin:
        token_scopes.discard(ADMIN_SCOPE)
    return Principal(user_id=user.id, public_id=user.public_id, scopes=frozenset(token_scopes))


def require_principal() -> Principal:
    principal = current_principal()
    if principal is None:  # only reachable if a view forgot @authenticated
        raise RuntimeError("view needs @authenticated")
    return principal


def _unauthorized(message: str) -> Response:
    return error_response(401, "UNAUTHENTICATED", message, headers={"WWW-Authenticate": "Bearer"})


def register_jwt_callbacks(app: Flask) -> None:
    @jwt.user_lookup_loader
    def _load_user(_header: dict, claims: dict) -> CurrentUser | None:
        try:
            public_id = uuid.UUID(str(claims["sub"]))
        except (KeyError, ValueError):
            return None
        return UserService.from_app().current_user(public_id)

    @jwt.token_in_blocklist_loader
    def _is_revoked(_header: dict, claims: dict) -> bool:
        """Refused if the token itself or its family is revoked (one Redis call or one query)."""
        return blocklist().is_revoked(str(claims.get("jti", "")), family_of(claims))

    @jwt.unauthorized_loader
    def _missing(reason: str) -> Response:
        return _unauthorized("Authentication is required: send Authorization: Bearer <token>.")

    @jwt.invalid_token_loader
    def _invalid(reason: str) -> Response:
        return _unauthorized("The token is not valid.")

    @jwt.expired_token_loader
    def _expired(_header: dict, _claims: dict) -> Response:
        return _unauthorized("The token has expired.")

    @jwt.revoked_token_loader
    def _revoked(_header: dict, claims: dict) -> Response:
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
        return _unauthorized("The token has been revoked.")

    @jwt.user_lookup_error_loader
    def _no_user(_header: dict, _claims: dict) -> Response:
        return _unauthorized("The token's user no longer exists.")

    @jwt.needs_fresh_token_loader
    def _not_fresh(_header: dict, _claims: dict) -> Response:
        return _unauthorized("A fresh token is required.")

    @jwt.token_verification_failed_loader
    def _failed(_header: dict, _claims: dict) -> Response:
        return _unauthorized("The token is not valid.")

    app.config.setdefault("JWT_ERROR_MESSAGE_KEY", "message")
