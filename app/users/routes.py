"""HTTP layer for users: /api/users, /api/users/{id}, /api/me."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView

from app.auth.guard import (
    BEARER_AUTH,
    authenticated,
    current_claims,
    current_principal,
    require_principal,
)
from app.auth.service import family_of
from app.core.api import ApiBlueprint, errors_doc, link, operation
from app.core.cache import Cache
from app.core.cached_read import cached_read
from app.core.history_http import (
    AsOfArgsSchema,
    EventListEnvelopeSchema,
    requested_instant,
    trail_json,
)
from app.core.http import if_match, listing_json, page_params, single_json
from app.core.idempotency import idempotent
from app.core.limiting import client_ip, route_limit
from app.core.pagination import PageArgsSchema
from app.core.security import PROFILE_SCOPE, USERS_WRITE_SCOPE, Principal
from app.users.cache import USER_KIND, UserSnapshot
from app.users.models import User
from app.users.representation import (
    private_user,
    private_user_from_state,
    public_user,
    with_email,
)
from app.users.schemas import (
    UserCreateSchema,
    UserEnvelopeSchema,
    UserListEnvelopeSchema,
    UserPatchSchema,
    UserPutSchema,
)
from app.users.service import UserService

blp = ApiBlueprint("users", __name__, url_prefix="/api", description="Users.")

WRITE_ERRORS = (400, 401, 403, 404, 409, 412, 413, 415, 429)
USER_ID = "$response.body#/data/id"
USER_LINKS = {
    "GetUser": link("getUser", user_id=USER_ID),
    "PatchUser": link("patchUser", user_id=USER_ID),
    "ReplaceUser": link("replaceUser", user_id=USER_ID),
    "DeleteUser": link("deleteUser", user_id=USER_ID),
    "ListUserPosts": link("listUserPosts", user_id=USER_ID),
    "ListUserEvents": link("listUserEvents", user_id=USER_ID),
    "CreatePost": link("createPost", user_id=USER_ID),
}
# OpenAPI examples, not credentials.
USER_EXAMPLE = {
    "email": "ada@example.com",
    "username": "ada_l",
    "display_name": "Ada Lovelace",
    "bio": "Analyst of engines.",
}
USER_CREATE_EXAMPLE = {**USER_EXAMPLE, "password": "correct horse"}  # nosec B105
PRIVATE = "private"  # ETag variant of the representation that includes the email


def service() -> UserService:
    return UserService.from_app()


def respond_snapshot(snapshot: UserSnapshot, cache: Cache) -> Any:
    """A single user from the cache-aside read; the email only for the user themself, admins."""
    viewer = current_principal()
    if viewer is not None and viewer.sees_private_of(snapshot.owner_id):
        view = with_email(snapshot.public, snapshot.email(cache))
        return single_json(view, snapshot.version, variant=PRIVATE)
    return single_json(snapshot.public, snapshot.version)


def public_read(data: dict[str, Any], viewer: Principal | None) -> dict[str, Any] | None:
    """A cached user as `viewer` sees it, or None when the view must add the email."""
    if viewer is not None and viewer.sees_private_of(data["owner"]):
        return None
    return data["public"]


def respond_as_of(user_id: uuid.UUID, as_of: str) -> Any:
    """The user as they were at `as_of`, for themself or an admin: what their GET answered
    then (with the email), rebuilt from events."""
    at, viewer = requested_instant(as_of, current_principal())
    replayed = service().as_of(user_id, at, viewer=viewer)
    view = private_user_from_state(str(user_id), replayed.version, replayed.state)
    return single_json(view, replayed.version, variant=PRIVATE)


def respond(user: User) -> Any:
    if UserService.email_visible(user, current_principal()):
        return single_json(private_user(user), user.version, variant=PRIVATE)
    return single_json(public_user(user), user.version)


@blp.route("/users")
class UserCollection(MethodView):
    @blp.response(200, UserListEnvelopeSchema)
    @operation(blp, "listUsers", security=[])
    @errors_doc(blp, 400)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, **args: Any) -> Any:
        """List users, newest first (offset or cursor pages)."""
        page = service().list(page_params(args))
        return listing_json(page, [public_user(u) for u in page.items])

    @idempotent(blp)
    @blp.response(201, UserEnvelopeSchema, headers={"Location": {"schema": {"type": "string"}}})
    @operation(blp, "createUser", security=[], links={201: USER_LINKS})
    @errors_doc(blp, 400, 409, 413, 415, 429)
    @blp.arguments(UserCreateSchema, example=USER_CREATE_EXAMPLE)
    @route_limit("RATELIMIT_REGISTER")
    def post(self, data: dict[str, Any]) -> Any:
        """Register a user."""
        user = service().register(data)
        return respond_created(user)


def respond_created(user: User) -> Any:
    location = url_for("users.UserItem", user_id=user.public_id)
    return single_json(
        private_user(user), user.version, status=201, location=location, variant=PRIVATE
    )


def update_user(user_id: uuid.UUID, data: dict[str, Any]) -> User:
    """PUT/PATCH: the caller's login survives its own password change; email changes are
    counted per client address too."""
    return service().update(
        user_id,
        data,
        actor=require_principal(),
        if_match=if_match(),
        family=family_of(current_claims()),
        address=client_ip(),
    )


@blp.route("/users/<uuid:user_id>")
class UserItem(MethodView):
    @blp.response(200, UserEnvelopeSchema)
    @operation(blp, "getUser", security=[*BEARER_AUTH, {}], conditional="read")
    @errors_doc(blp, 400, 401, 403, 404, 422)
    @authenticated(optional=True)
    @cached_read(USER_KIND, "user_id", public_read)  # served by the pipeline when cached
    @blp.arguments(AsOfArgsSchema, location="query", as_kwargs=True)
    def get(self, user_id: uuid.UUID, as_of: str | None = None) -> Any:
        """Get a user (the email only for the user themself and admins); with `as_of`, as
        they were at that instant (the user themself and admins)."""
        if as_of is not None:
            return respond_as_of(user_id, as_of)
        users = service()
        return respond_snapshot(users.read(user_id), users.cache)

    @blp.response(200, UserEnvelopeSchema)
    @operation(
        blp, "replaceUser", security=BEARER_AUTH, links={200: USER_LINKS}, conditional="write"
    )
    @errors_doc(blp, *WRITE_ERRORS)
    @authenticated(scope=USERS_WRITE_SCOPE)
    @blp.arguments(UserPutSchema, example=USER_EXAMPLE)
    def put(self, data: dict[str, Any], user_id: uuid.UUID) -> Any:
        """Replace a user's profile (every mutable field required)."""
        user = update_user(user_id, data)
        return respond(user)

    @blp.response(200, UserEnvelopeSchema)
    @operation(blp, "patchUser", security=BEARER_AUTH, links={200: USER_LINKS}, conditional="write")
    @errors_doc(blp, *WRITE_ERRORS)
    @authenticated(scope=USERS_WRITE_SCOPE)
    @blp.arguments(UserPatchSchema, example={"display_name": "Countess of Lovelace"})
    def patch(self, data: dict[str, Any], user_id: uuid.UUID) -> Any:
        """Change some of a user's fields."""
        user = update_user(user_id, data)
        return respond(user)

    @blp.response(204)
    @operation(blp, "deleteUser", security=BEARER_AUTH, conditional="write")
    @errors_doc(blp, 401, 403, 404, 412, 413, 415)
    @authenticated(scope=USERS_WRITE_SCOPE)
    def delete(self, user_id: uuid.UUID) -> Any:
        """Soft-delete a user and their posts; their email and username become free."""
        service().delete(user_id, actor=require_principal(), if_match=if_match())
        return ""


@blp.route("/users/<uuid:user_id>/events")
class UserEvents(MethodView):
    @blp.response(200, EventListEnvelopeSchema)
    @operation(blp, "listUserEvents", security=BEARER_AUTH, conditional="read")
    @errors_doc(blp, 400, 401, 403, 404)
    @authenticated(scope=PROFILE_SCOPE)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, user_id: uuid.UUID, **args: Any) -> Any:
        """A user's audit trail: every write to them, oldest first (the user themself, admins)."""
        page = service().events(user_id, page_params(args), viewer=require_principal())
        return trail_json(page)


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, UserEnvelopeSchema)
    @operation(blp, "getMe", security=BEARER_AUTH, links={200: USER_LINKS})
    @errors_doc(blp, 400, 401, 404, 422)
    @authenticated()
    @blp.arguments(AsOfArgsSchema, location="query", as_kwargs=True)
    def get(self, as_of: str | None = None) -> Any:
        """The caller's own user (the email with the `profile` scope); with `as_of`, as they
        were at that instant."""
        if as_of is not None:
            return respond_as_of(require_principal().public_id, as_of)
        users = service()
        return respond_snapshot(users.read(require_principal().public_id), users.cache)
