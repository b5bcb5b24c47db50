"""The OAuth 2.0 authorization server: authlib's, wired to our storage and our JWTs.

- authorization code grant, PKCE required with S256 only (`S256Only`), codes single-use and
  60 s (app/oauth/service.py);
- refresh token grant with rotation: the presented refresh token is spent in the shared blocklist
  before a new pair is issued, and a spent one presented again revokes its whole family, as
  first-party refresh does (app/auth/service.py);
- RFC 7009 revocation (a token revokes its whole grant) and RFC 8414 metadata.
The tokens are the service's own JWTs (`AuthService.issue`) with the granted scopes and a
`client_id` claim, so every route and the pipeline's auth step treat them like any token.
"""

from __future__ import annotations

import uuid
from typing import Any

import jwt as pyjwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, current_app, url_for
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException

from app.auth.service import (
    CLIENT_CLAIM,
    AuthService,
    check_claims,
    family_of,
    new_family,
    outlived_cutoff,
)
from app.core.errors import Unauthenticated
from app.core.security import USER_SCOPES, CurrentUser
from app.oauth.models import OAuthClient, OAuthCode
from app.oauth.service import OAuthService
from app.users.service import UserService

SERVER = "oauth.server"  # app.extensions key
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]


def oauth_service() -> OAuthService:
    return OAuthService.from_app()


class S256Only(CodeChallenge):
    """PKCE on every authorization request, S256 only (contract §9): authlib's CodeChallenge
    lets a request without a challenge through and defaults a missing method to plain."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - authlib's attribute
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge': PKCE is required.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class TokenIssuer:
    """What the grants share: our JWTs for a grant's family, the family recorded as a grant."""

    request: Any

    def issue_for(self, user: Any, scope: str, family: str) -> dict[str, Any]:
        client: OAuthClient = self.request.client
        scopes = [s for s in USER_SCOPES if s in scope.split()]
        pair = AuthService.from_app().issue(user, family, scopes, client_id=client.client_id)
        return {
            "access_token": pair.access_token,
            "token_type": pair.token_type,
            "expires_in": pair.expires_in,
            "refresh_token": pair.refresh_token,
            "scope": " ".join(scopes),
        }


class CodeGrant(TokenIssuer, AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code: str, request: Any) -> None:
        oauth_service().save_code(code, request.client, request.user.id, request)

    def query_authorization_code(self, code: str, client: OAuthClient) -> OAuthCode | None:
        return oauth_service().spend_code(code, client)

    def delete_authorization_code(self, authorization_code: OAuthCode) -> None:
        return None  # spent when it was read: kept (hashed) so a replay can be recognised

    def authenticate_user(self, authorization_code: OAuthCode) -> Any:
        return oauth_service().user_of(authorization_code.user_id)

    def generate_token(self, user: Any = None, scope: Any = None, **_: Any) -> dict[str, Any]:
        family = new_family()
        code: OAuthCode = self.request.authorization_code
        oauth_service().open_grant(code, family, self.request.client, user.id, scope or "")
        return self.issue_for(user, scope or "", family)

    def save_token(self, token: dict[str, Any]) -> None:
        return None  # JWTs: the grant row and the blocklist are the state


class AppRefreshToken:
    """A presented refresh token of an app, as authlib's refresh grant asks about it."""

    def __init__(self, claims: dict[str, Any]) -> None:
        self.claims = claims

    def check_client(self, client: OAuthClient) -> bool:
        return self.claims.get(CLIENT_CLAIM) == client.client_id

    def get_scope(self) -> str:
        return " ".join(self.claims.get("scope", []))

    def is_expired(self) -> bool:
        return False  # the decoder checked `exp`

    def is_revoked(self) -> bool:
        return False  # the blocklist was checked when it was read


def app_token_claims(token: str) -> dict[str, Any] | None:
    """The claims of one of our JWTs issued to an app, or None (bad, expired, first-party)."""
    try:
        claims = decode_token(token, allow_expired=False)
        check_claims(token)
    except (JWTExtendedException, pyjwt.PyJWTError, ValueError, KeyError):
        return None
    if not isinstance(claims.get(CLIENT_CLAIM), str) or family_of(claims) is None:
        return None
    return claims


class AppRefreshGrant(TokenIssuer, RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> AppRefreshToken | None:
        claims = app_token_claims(refresh_token)
        if claims is None or claims.get("type") != "refresh":
            return None
        auth = AuthService.from_app()
        if auth.blocklist.is_revoked(str(claims["jti"]), family_of(claims)):
            auth.refresh_token_reused(claims)  # a spent one again: the whole grant ends
            return None
        return AppRefreshToken(claims)

    def authenticate_user(self, refresh_token: AppRefreshToken) -> CurrentUser | None:
        """The token's user, still there, and no password change since the grant began."""
        claims = refresh_token.claims
        public_id = uuid.UUID(str(claims["sub"]))
        state = UserService.from_app().token_state(public_id)
        if state is None or outlived_cutoff(
            claims, state.tokens_cutoff_ms, state.tokens_kept_family
        ):
            return None
        return CurrentUser(state.owner_id, public_id, state.is_admin)

    def issue_token(self, user: Any, refresh_token: AppRefreshToken) -> dict[str, Any]:
        claims = refresh_token.claims
        try:
            AuthService.from_app().spend_refresh(claims)  # before issuing: two racers, one pair
        except Unauthenticated as exc:  # the loser of a race is a reuse: its family is ended
            raise InvalidGrantError("The refresh token has been used.") from exc
        scope = self.request.payload.scope or refresh_token.get_scope()
        return self.issue_for(user, scope, str(family_of(claims)))

    def revoke_old_credential(self, refresh_token: AppRefreshToken) -> None:
        return None  # spent in issue_token, before the new pair existed

    def save_token(self, token: dict[str, Any]) -> None:
        return None


class AppRevocation(RevocationEndpoint):
    """RFC 7009: revoking any token of a grant (access or refresh) ends the whole grant."""

    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        claims = app_token_claims(token_string)
        return AppRefreshToken(claims) if claims is not None else None

    def revoke_token(self, token: AppRefreshToken, request: Any) -> None:
        family = family_of(token.claims)
        if family is not None:
            oauth_service().end_family(family)


def query_client(client_id: str) -> OAuthClient | None:
    return oauth_service().find(client_id)


def init_server(app: Flask) -> AuthorizationServer:
    server = AuthorizationServer()
    server.init_app(app, query_client=query_client, save_token=lambda *_: None)
    server.scopes_supported = list(USER_SCOPES)
    server.register_grant(CodeGrant, [S256Only(required=True)])
    server.register_grant(AppRefreshGrant)
    server.register_endpoint(AppRevocation)
    app.extensions[SERVER] = server
    return server


def server() -> AuthorizationServer:
    found: AuthorizationServer = current_app.extensions[SERVER]
    return found


def metadata() -> dict[str, Any]:
    """RFC 8414: what a client needs to find our endpoints."""
    issuer = url_for("oauth_server.metadata_view", _external=True).rsplit("/.well-known", 1)[0]
    return {
        "issuer": issuer,
        "authorization_endpoint": url_for("oauth_pages.Authorize", _external=True),
        "token_endpoint": url_for("oauth_server.token", _external=True),
        "revocation_endpoint": url_for("oauth_server.revoke", _external=True),
        "scopes_supported": list(USER_SCOPES),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "service_documentation": issuer + "/api/docs",
    }
