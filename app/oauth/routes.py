"""HTTP for apps and their grants: the owners' `/api/oauth/clients`, the users'
`/api/me/authorizations`, and the authorization server's `/oauth/token`, `/oauth/revoke` and
`/.well-known/oauth-authorization-server` (the consent page is app/oauth/authorize.py)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, url_for
from flask.views import MethodView

from app.auth.guard import BEARER_AUTH, authenticated, require_principal
from app.core.api import ApiBlueprint, errors_doc, operation
from app.core.http_security import sensitive
from app.core.pipeline import form_body
from app.oauth.models import OAuthClient
from app.oauth.schemas import (
    AuthorizationListEnvelopeSchema,
    ClientCreateSchema,
    ClientEnvelopeSchema,
    ClientListEnvelopeSchema,
)
from app.oauth.server import metadata, oauth_service, server
from app.oauth.service import OAuthService

blp = ApiBlueprint("oauth", __name__, url_prefix="/api", description="Third-party apps (OAuth).")
server_blp = ApiBlueprint(
    "oauth_server", __name__, description="The OAuth 2.0 authorization server (docs/oauth.md)."
)
sensitive(blp)  # a new app's secret: never stored by a cache, never compressed
sensitive(server_blp)  # token bodies, likewise


def service() -> OAuthService:
    return oauth_service()


def client_view(client: OAuthClient, owner_public_id: Any, secret: str | None = None) -> dict:
    view = {
        "client_id": client.client_id,
        "name": client.name,
        "owner_id": str(owner_public_id),
        "redirect_uris": client.redirect_uris,
        "scopes": client.scopes,
        "confidential": client.confidential,
        "created_at": client.created_at,
    }
    if secret is not None:
        view["client_secret"] = secret
    return view


def _owner_id(client: OAuthClient) -> Any:
    owner = service().repo.owner_of(client)
    return owner.public_id if owner is not None else None


@blp.route("/oauth/clients")
class ClientCollection(MethodView):
    @blp.response(200, ClientListEnvelopeSchema)
    @operation(blp, "listOAuthClients", security=BEARER_AUTH)
    @errors_doc(blp, 401)
    @authenticated()
    def get(self) -> Any:
        """Your registered apps."""
        caller = require_principal()
        clients = service().clients(caller.user_id)
        return {"data": [client_view(c, caller.public_id) for c in clients]}

    @blp.response(201, ClientEnvelopeSchema, headers={"Location": {"schema": {"type": "string"}}})
    @operation(blp, "createOAuthClient", security=BEARER_AUTH)
    @errors_doc(blp, 400, 401, 413, 415)
    @authenticated()
    @blp.arguments(ClientCreateSchema)
    def post(self, data: dict[str, Any]) -> Any:
        """Register an app; a confidential app's `client_secret` is in this answer only."""
        caller = require_principal()
        made = service().register(caller.user_id, data)
        body = {"data": client_view(made.client, caller.public_id, made.client_secret)}
        location = url_for("oauth.ClientItem", client_id=made.client.client_id)
        return body, 201, {"Location": location}


@blp.route("/oauth/clients/<string:client_id>")
class ClientItem(MethodView):
    @blp.response(200, ClientEnvelopeSchema)
    @operation(blp, "getOAuthClient", security=BEARER_AUTH)
    @errors_doc(blp, 401, 404)
    @authenticated()
    def get(self, client_id: str) -> Any:
        """One of your apps (its secret is never shown again)."""
        client = service().owned(client_id, require_principal())
        return {"data": client_view(client, _owner_id(client))}

    @blp.response(204)
    @operation(blp, "deleteOAuthClient", security=BEARER_AUTH)
    @errors_doc(blp, 401, 404)
    @authenticated()
    def delete(self, client_id: str) -> Any:
        """Delete an app: every token it holds is refused from now on."""
        oauth = service()
        oauth.delete(oauth.owned(client_id, require_principal()))
        return ""


@blp.route("/me/authorizations")
class Authorizations(MethodView):
    @blp.response(200, AuthorizationListEnvelopeSchema)
    @operation(blp, "listMyAuthorizations", security=BEARER_AUTH)
    @errors_doc(blp, 401)
    @authenticated()
    def get(self) -> Any:
        """The apps you allowed, with the scopes they hold."""
        found = service().authorizations(require_principal().user_id)
        return {
            "data": [
                {
                    "client_id": a.client.client_id,
                    "name": a.client.name,
                    "scopes": a.scopes,
                    "granted_at": a.granted_at,
                }
                for a in found
            ]
        }


@blp.route("/me/authorizations/<string:client_id>")
class AuthorizationItem(MethodView):
    @blp.response(204)
    @operation(blp, "revokeMyAuthorization", security=BEARER_AUTH)
    @errors_doc(blp, 401, 404)
    @authenticated()
    def delete(self, client_id: str) -> Any:
        """End an app's access: every token of it is refused at once, in every process."""
        service().revoke_authorization(require_principal().user_id, client_id)
        return ""


FORM_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}},
    },
}
RFC_ERROR = {"description": "RFC 6749 §5.2: {error, error_description} (not the envelope)."}


@server_blp.route("/oauth/token", methods=["POST"])
@server_blp.doc(
    operationId="oauthToken",
    security=[],
    summary="Exchange a code (with its PKCE verifier) or a refresh token for tokens.",
    responses={"200": {"description": "The token response (RFC 6749 §5.1)."}, "400": RFC_ERROR,
               "401": RFC_ERROR},
    **FORM_DOC,
)  # fmt: skip
@form_body
def token() -> Response:
    """RFC 6749 §4.1.3 and §6, form-encoded; errors in RFC 6749 §5.2's shape."""
    answer: Response = server().create_token_response()
    return answer


@server_blp.route("/oauth/revoke", methods=["POST"])
@server_blp.doc(
    operationId="oauthRevoke",
    security=[],
    summary="RFC 7009: revoke a token (and so its whole grant).",
    responses={"200": {"description": "Revoked (or unknown: RFC 7009 §2.2)."}, "400": RFC_ERROR,
               "401": RFC_ERROR},
    **FORM_DOC,
)  # fmt: skip
@form_body
def revoke() -> Response:
    """RFC 7009, form-encoded."""
    answer: Response = server().create_endpoint_response("revocation")
    return answer


@server_blp.route("/.well-known/oauth-authorization-server", methods=["GET"])
@server_blp.doc(
    operationId="oauthMetadata",
    security=[],
    summary="RFC 8414 metadata.",
    responses={
        "200": {
            "description": "The server's metadata (RFC 8414 §2).",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
def metadata_view() -> Response:
    """Where the endpoints are and what they support (RFC 8414)."""
    return jsonify(metadata())
