"""HTTP layer for authentication: login, refresh (with rotation), logout."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask.views import MethodView

from app.auth.guard import (
    BEARER_AUTH,
    auth_service,
    authenticated,
    current_claims,
    current_user,
)
from app.auth.schemas import LoginSchema, TokenEnvelopeSchema
from app.auth.service import AuthService
from app.core.api import ApiBlueprint, errors_doc, operation
from app.core.http_security import sensitive
from app.core.limiting import client_ip, route_limit

# An OpenAPI example, not a credential.
LOGIN_EXAMPLE = {"email": "ada@example.com", "password": "correct horse"}  # nosec B105

blp = ApiBlueprint("auth", __name__, url_prefix="/api/auth", description="Authentication.")
sensitive(blp)  # token bodies: never stored by a cache, never compressed


def service() -> AuthService:
    return auth_service()


@blp.route("/login")
class Login(MethodView):
    @blp.response(200, TokenEnvelopeSchema)
    @operation(blp, "login", security=[])
    @errors_doc(blp, 400, 401, 413, 415, 429)
    @blp.arguments(LoginSchema, example=LOGIN_EXAMPLE)
    @route_limit("RATELIMIT_LOGIN")
    def post(self, data: dict[str, Any]) -> Any:
        """Exchange email and password for an access and a refresh token."""
        tokens = service().login(data["email"], data["password"], client_ip())
        return {"data": asdict(tokens)}


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.response(200, TokenEnvelopeSchema)
    @operation(blp, "refreshToken", security=BEARER_AUTH)
    @errors_doc(blp, 401, 413, 415)
    @authenticated(refresh=True)
    def post(self) -> Any:
        """Send the refresh token as Bearer: get a new pair; the old refresh token is revoked."""
        return {"data": asdict(service().refresh(current_user(), current_claims()))}


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(204)
    @operation(blp, "logout", security=BEARER_AUTH)
    @errors_doc(blp, 401, 413, 415)
    @authenticated()
    def post(self) -> Any:
        """Revoke the access token sent and every token of its login (its refresh token too)."""
        service().logout(current_claims())
        return ""
