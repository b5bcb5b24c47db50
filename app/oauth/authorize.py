"""`GET/POST /oauth/authorize`: the page where a person signs in and allows or denies an app.

Server-rendered (Jinja), no JavaScript. The page's own state is a signed cookie (HttpOnly,
SameSite=Lax so the first top-level visit from the app carries it, Path=/oauth, Secure over
https), holding a CSRF token every form must echo and, once signed in, the user and when.
Sign-in runs `AuthService.authenticate`, the login's own limits and lockout, and the POST has
the login's per-IP route limit. An unknown client or an unregistered redirect URI is an error
page, never a redirect; `state` goes back untouched (authlib). CSP: no script at all, styles
from our CSS file, forms to ourselves and to the app's redirect origin only, never framed.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from typing import Any, TypeVar
from urllib.parse import urlsplit

from authlib.oauth2 import OAuth2Error
from flask import Response, current_app, make_response, redirect, render_template, request
from flask.views import MethodView
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from app.auth.service import AuthService, new_family, outlived_cutoff
from app.core.api import ApiBlueprint
from app.core.errors import RateLimited, Unauthenticated
from app.core.limiting import client_ip, route_limit
from app.core.pipeline import form_body
from app.core.security import SCOPE_WORDS, CurrentUser
from app.oauth.server import oauth_service, server
from app.users.service import UserService

blp = ApiBlueprint(
    "oauth_pages",
    __name__,
    url_prefix="/oauth",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
    description="The consent page (HTML).",
)
COOKIE = "pb_oauth"
COOKIE_SECONDS = 30 * 60
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'{targets}; "
    "frame-ancestors 'none'; base-uri 'none'"
)
R = TypeVar("R", bound=BaseResponse)
HTML_DOC = {
    "description": "An HTML page.",
    "content": {"text/html": {"schema": {"type": "string"}}},
}
# An unknown app or an unregistered redirect URI: an error page, never a redirect (§9).
HTML_ERROR_DOC = {
    "description": "An HTML error page (unknown app, unregistered redirect URI, bad request).",
    "content": {"text/html": {"schema": {"type": "string"}}},
}


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="oauth-authorize")


def _session() -> dict[str, Any]:
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            value = _signer().loads(raw, max_age=COOKIE_SECONDS)
            if isinstance(value, dict) and isinstance(value.get("csrf"), str):
                return value
        except BadSignature:
            pass
    return {"csrf": secrets.token_urlsafe(32)}


def _keep(response: R, session: dict[str, Any]) -> R:
    response.set_cookie(
        COOKIE,
        _signer().dumps(session),
        max_age=COOKIE_SECONDS,
        path="/oauth",
        httponly=True,
        samesite="Lax",
        secure=request.is_secure or current_app.config.get("APP_ENV") == "production",
    )
    return response


def _user(session: dict[str, Any]) -> CurrentUser | None:
    """The signed-in user, while they exist and no password change since ended the sign-in."""
    try:
        public_id = uuid.UUID(str(session.get("uid")))
    except ValueError:
        return None
    state = UserService.from_app().token_state(public_id)
    claims = {"fam": session.get("fam"), "iat": int(session.get("at", 0)) // 1000}
    if state is None or outlived_cutoff(claims, state.tokens_cutoff_ms, state.tokens_kept_family):
        return None
    return CurrentUser(state.owner_id, public_id, state.is_admin)


def _page(template: str, session: dict[str, Any], status: int = 200, **context: Any) -> Response:
    redirect_uri = context.get("redirect_uri")
    origin = ""
    if redirect_uri:  # a validated, registered URI: the Allow/Deny redirect goes there
        parts = urlsplit(redirect_uri)
        origin = f" {parts.scheme}://{parts.netloc}"
    body = render_template(template, csrf=session["csrf"], **context)
    response = make_response(body, status)
    response.mimetype = "text/html"
    response.headers["Content-Security-Policy"] = CSP.format(targets=origin)
    response.headers["Cache-Control"] = "no-store"
    return _keep(response, session)


def _error(session: dict[str, Any], message: str, status: int = 400) -> Response:
    return _page("oauth/error.html", session, status, message=message)


def _grant(user: CurrentUser | None) -> Any:
    """authlib's consent grant for this request; raises OAuth2Error."""
    return server().get_consent_grant(end_user=user)


def _refused(error: OAuth2Error, session: dict[str, Any]) -> Response:
    """A redirect with the error only where authlib validated the client's redirect URI."""
    if error.redirect_uri:
        answer: Response = server().handle_error_response(None, error)
        return answer
    return _error(session, error.description or error.error)


def _consent(session: dict[str, Any], user: CurrentUser | None, grant: Any, status: int = 200,
             problem: str | None = None) -> Response:  # fmt: skip
    client = grant.request.client
    scopes = (grant.request.scope or "").split()
    context = {
        "client": client,
        "owner": oauth_service().owner_name(client),
        "scopes": [(s, SCOPE_WORDS.get(s, s)) for s in scopes],
        "redirect_uri": grant.request.payload.redirect_uri,
        "problem": problem,
        "action": request.full_path,
    }
    if user is None:
        return _page("oauth/signin.html", session, status, **context)
    me = UserService.from_app().get(user.public_id)
    return _page("oauth/consent.html", session, status, user=me, **context)


@blp.route("/authorize")
class Authorize(MethodView):
    @blp.doc(
        operationId="oauthAuthorize",
        security=[],
        responses={"200": HTML_DOC, "400": HTML_ERROR_DOC},
    )
    def get(self) -> Response:
        """The sign-in or consent page (HTML)."""
        session = _session()
        user = _user(session)
        try:
            grant = _grant(user)
        except OAuth2Error as error:
            return _refused(error, session)
        return _consent(session, user, grant)

    @blp.doc(
        operationId="oauthAuthorizeDecision",
        security=[],
        # The page again: a missing sign-in (400), a wrong password (401), a stale form (403),
        # the login limit (429).
        responses={"200": HTML_DOC, **dict.fromkeys(("400", "401", "403", "429"), HTML_ERROR_DOC)},
    )
    @route_limit("RATELIMIT_LOGIN")
    @form_body
    def post(self) -> BaseResponse:
        """Sign in, or Allow / Deny (an HTML form, with its CSRF token)."""
        session = _session()
        sent = request.form.get("csrf_token", "")
        if not hmac.compare_digest(sent.encode(), str(session["csrf"]).encode()):
            return _error(session, "This form has expired or was not sent from this page. "
                          "Go back to the app and start again.", 403)  # fmt: skip
        user = _user(session)
        try:
            grant = _grant(user)
        except OAuth2Error as error:
            return _refused(error, session)
        action = request.form.get("action")
        if action == "signin":
            return _sign_in(session, grant)
        if user is None or action not in ("allow", "deny"):
            return _consent(session, None, grant, 400, "Sign in first.")
        answer: Response = server().create_authorization_response(
            grant_user=user if action == "allow" else None, grant=grant
        )
        session["csrf"] = secrets.token_urlsafe(32)  # one decision per token
        return _keep(answer, session)


def _sign_in(session: dict[str, Any], grant: Any) -> BaseResponse:
    try:
        user = AuthService.from_app().authenticate(
            request.form.get("email", ""), request.form.get("password", ""), client_ip()
        )
    except Unauthenticated as refused:
        return _consent(session, None, grant, 401, refused.message)
    except RateLimited as refused:
        response = _consent(session, None, grant, 429, refused.message)
        response.headers.update(refused.headers)
        return response
    session = {
        "csrf": secrets.token_urlsafe(32),  # a new one once signed in (no fixation)
        "uid": str(user.public_id),
        "fam": new_family(),  # its time tells a later password change to end this sign-in
        "at": int(time.time() * 1000),
    }
    return _keep(redirect(request.full_path, 303), session)
