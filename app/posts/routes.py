"""HTTP layer for posts: /api/posts, /api/posts/{id}, /api/users/{id}/posts."""

from __future__ import annotations

import uuid
from typing import Any

from flask import url_for
from flask.views import MethodView
from werkzeug.routing import BaseConverter, ValidationError

from app.auth.guard import BEARER_AUTH, authenticated, current_principal, require_principal
from app.core.api import ApiBlueprint, errors_doc, link, operation
from app.core.cached_read import cached_read
from app.core.history import Replayed
from app.core.history_http import (
    AsOfArgsSchema,
    EventListEnvelopeSchema,
    requested_instant,
    trail_json,
)
from app.core.http import if_match, listing_json, page_params, single_json
from app.core.idempotency import idempotent
from app.core.pagination import PageArgsSchema
from app.core.security import DRAFTS_READ_SCOPE, POSTS_WRITE_SCOPE, Principal
from app.extensions import api
from app.posts.cache import POST_KIND, anonymous_view
from app.posts.models import Post
from app.posts.representation import post_from_state, public_post
from app.posts.schemas import (
    PostCreateSchema,
    PostEnvelopeSchema,
    PostListEnvelopeSchema,
    PostPatchSchema,
    PostPutSchema,
)
from app.posts.service import PostService
from app.posts.slugs import SLUG_MAX, SLUG_MIN, SLUG_REGEX, is_well_formed

blp = ApiBlueprint("posts", __name__, url_prefix="/api", description="Posts.")


class SlugConverter(BaseConverter):
    """`<slug:...>`: a well-formed slug, else the route does not match (404, like a bad uuid)."""

    regex = SLUG_REGEX

    def to_python(self, value: str) -> str:
        if not is_well_formed(value):  # the regex cannot bound the length
            raise ValidationError()
        return value


# The converter must be on the app's url_map before this blueprint's rules are bound (deferred
# functions run in order), and the OpenAPI document publishes exactly what it accepts.
blp.record(lambda state: state.app.url_map.converters.setdefault("slug", SlugConverter))
api.register_converter(
    SlugConverter,
    lambda _converter: {
        "type": "string",
        "pattern": f"^{SLUG_REGEX}$",
        "minLength": SLUG_MIN,
        "maxLength": SLUG_MAX,
    },
)

WRITE_ERRORS = (400, 401, 403, 404, 412, 413, 415)
POST_ID = "$response.body#/data/id"
POST_LINKS = {
    "GetPost": link("getPost", post_id=POST_ID),
    "GetPostBySlug": link("getPostBySlug", slug="$response.body#/data/slug"),
    "PatchPost": link("patchPost", post_id=POST_ID),
    "ReplacePost": link("replacePost", post_id=POST_ID),
    "DeletePost": link("deletePost", post_id=POST_ID),
    "ListPostEvents": link("listPostEvents", post_id=POST_ID),
}
POST_EXAMPLE = {"title": "Hello", "body": "First post.", "status": "published"}
OPTIONAL_AUTH = [*BEARER_AUTH, {}]


def service() -> PostService:
    return PostService.from_app()


def public_read(data: dict[str, Any], viewer: Principal | None) -> dict[str, Any] | None:
    """A cached post for an anonymous reader (a signed-in one may see more: the view answers)."""
    return None if viewer is not None else anonymous_view(data)


def respond(post: Post, *, status: int = 200) -> Any:
    location = url_for("posts.PostItem", post_id=post.public_id) if status == 201 else None
    return single_json(public_post(post), post.version, status=status, location=location)


def respond_replayed(replayed: Replayed, post_id: uuid.UUID | str) -> Any:
    """A post as it was at an instant (rebuilt from its events), with that version's ETag."""
    return single_json(
        post_from_state(str(post_id), replayed.version, replayed.state), replayed.version
    )


@blp.route("/posts")
class PostCollection(MethodView):
    @blp.response(200, PostListEnvelopeSchema)
    @operation(blp, "listPosts", security=[])
    @errors_doc(blp, 400)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, **args: Any) -> Any:
        """Published posts, newest first (offset or cursor pages)."""
        page = service().list_published(page_params(args))
        return listing_json(page, [public_post(p) for p in page.items])


@blp.route("/users/<uuid:user_id>/posts")
class UserPosts(MethodView):
    @blp.response(200, PostListEnvelopeSchema)
    @operation(blp, "listUserPosts", security=OPTIONAL_AUTH)
    @errors_doc(blp, 400, 401, 404)
    @authenticated(optional=True)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, user_id: uuid.UUID, **args: Any) -> Any:
        """A user's posts, newest first; drafts too for the user themself and admins."""
        page = service().list_by_author(user_id, page_params(args), viewer=current_principal())
        return listing_json(page, [public_post(p) for p in page.items])

    @idempotent(blp)
    @blp.response(201, PostEnvelopeSchema, headers={"Location": {"schema": {"type": "string"}}})
    @operation(blp, "createPost", security=BEARER_AUTH, links={201: POST_LINKS})
    @errors_doc(blp, 400, 401, 403, 404, 413, 415)
    @authenticated(scope=POSTS_WRITE_SCOPE)
    @blp.arguments(PostCreateSchema, example=POST_EXAMPLE)
    def post(self, data: dict[str, Any], user_id: uuid.UUID) -> Any:
        """Create a post as this user."""
        return respond(service().create(user_id, data, actor=require_principal()), status=201)


@blp.route("/posts/<uuid:post_id>")
class PostItem(MethodView):
    @blp.response(200, PostEnvelopeSchema)
    @operation(blp, "getPost", security=OPTIONAL_AUTH, conditional="read")
    @errors_doc(blp, 400, 401, 403, 404, 422)
    @authenticated(optional=True)
    @cached_read(
        POST_KIND, "post_id", lambda data, viewer: None if viewer else anonymous_view(data)
    )
    @blp.arguments(AsOfArgsSchema, location="query", as_kwargs=True)
    def get(self, post_id: uuid.UUID, as_of: str | None = None) -> Any:
        """Get a post (a draft only for its author and admins); with `as_of`, as it was at
        that instant (its author and admins)."""
        if as_of is not None:
            at, viewer = requested_instant(as_of, current_principal())
            return respond_replayed(service().as_of(post_id, at, viewer=viewer), post_id)
        snapshot = service().read(post_id, viewer=current_principal())
        return single_json(snapshot.public, snapshot.version)

    @blp.response(200, PostEnvelopeSchema)
    @operation(
        blp, "replacePost", security=BEARER_AUTH, links={200: POST_LINKS}, conditional="write"
    )
    @errors_doc(blp, *WRITE_ERRORS)
    @authenticated(scope=POSTS_WRITE_SCOPE)
    @blp.arguments(PostPutSchema, example=POST_EXAMPLE)
    def put(self, data: dict[str, Any], post_id: uuid.UUID) -> Any:
        """Replace a post (title, body and status required)."""
        post = service().update(post_id, data, actor=require_principal(), if_match=if_match())
        return respond(post)

    @blp.response(200, PostEnvelopeSchema)
    @operation(blp, "patchPost", security=BEARER_AUTH, links={200: POST_LINKS}, conditional="write")
    @errors_doc(blp, *WRITE_ERRORS)
    @authenticated(scope=POSTS_WRITE_SCOPE)
    @blp.arguments(PostPatchSchema, example={"status": "draft"})
    def patch(self, data: dict[str, Any], post_id: uuid.UUID) -> Any:
        """Change some of a post's fields."""
        post = service().update(post_id, data, actor=require_principal(), if_match=if_match())
        return respond(post)

    @blp.response(204)
    @operation(blp, "deletePost", security=BEARER_AUTH, conditional="write")
    @errors_doc(blp, 401, 403, 404, 412, 413, 415)
    @authenticated(scope=POSTS_WRITE_SCOPE)
    def delete(self, post_id: uuid.UUID) -> Any:
        """Soft-delete a post."""
        service().delete(post_id, actor=require_principal(), if_match=if_match())
        return ""


@blp.route("/posts/<uuid:post_id>/events")
class PostEvents(MethodView):
    @blp.response(200, EventListEnvelopeSchema)
    @operation(blp, "listPostEvents", security=BEARER_AUTH, conditional="read")
    @errors_doc(blp, 400, 401, 403, 404)
    @authenticated(scope=DRAFTS_READ_SCOPE)
    @blp.arguments(PageArgsSchema, location="query", as_kwargs=True)
    def get(self, post_id: uuid.UUID, **args: Any) -> Any:
        """A post's audit trail: every write to it, oldest first (its author, admins)."""
        page = service().events(post_id, page_params(args), viewer=require_principal())
        return trail_json(page)


@blp.route("/posts/by-slug/<slug:slug>")
class PostBySlug(MethodView):
    @blp.response(200, PostEnvelopeSchema)
    @operation(blp, "getPostBySlug", security=OPTIONAL_AUTH, conditional="read")
    @errors_doc(blp, 400, 401, 403, 404, 422)
    @authenticated(optional=True)
    @blp.arguments(AsOfArgsSchema, location="query", as_kwargs=True)
    def get(self, slug: str, as_of: str | None = None) -> Any:
        """Get a post by its slug: the same answer, ETag and visibility as by its id (`as_of`
        too, for a live post's slug)."""
        if as_of is not None:
            at, viewer = requested_instant(as_of, current_principal())
            post_id, replayed = service().as_of_slug(slug, at, viewer=viewer)
            return respond_replayed(replayed, post_id)
        snapshot = service().read_by_slug(slug, viewer=current_principal())
        return single_json(snapshot.public, snapshot.version)
