"""The Query type: the same reads as REST, through the same services and cache."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.types import Info

from app.core.pagination import DEFAULT_PER_PAGE
from app.graphql.context import AuthorGroup, RequestContext, context_of, public_id
from app.graphql.paging import cursor_named_after, page_params
from app.graphql.types import (
    PostConnection,
    PostNode,
    UserConnection,
    UserNode,
    user_connection,
    user_from_row,
)
from app.users.cache import UserSnapshot


def user_from_snapshot(context: RequestContext, snapshot: UserSnapshot) -> UserNode:
    """A user read through the cache (`UserService.read`, as GET /api/users/{id})."""
    cache = context.users.cache
    return UserNode.from_view(
        snapshot.public, snapshot.owner_id, lambda: snapshot.email(cache), group=None
    )


@strawberry.type
class Query:
    @strawberry.field(description="A user by id (null and NOT_FOUND when there is none).")
    def user(self, info: Info[Any, Any], id: strawberry.ID) -> UserNode | None:
        context = context_of(info)
        return user_from_snapshot(context, context.users.read(public_id(id)))

    @strawberry.field(description="Users, newest first (a cursor connection).")
    def users(
        self, info: Info[Any, Any], first: int = DEFAULT_PER_PAGE, after: str | None = None
    ) -> UserConnection:
        context = context_of(info)
        with cursor_named_after():
            page = context.users.list(page_params(first, after))
        group = AuthorGroup()  # their posts, if asked, in one query for the whole page
        return user_connection(page, [user_from_row(u, group) for u in page.items])

    @strawberry.field(description="A post by id (drafts: their author and admins only).")
    def post(self, info: Info[Any, Any], id: strawberry.ID) -> PostNode | None:
        context = context_of(info)
        snapshot = context.posts.read(public_id(id), viewer=context.viewer)
        return PostNode.from_view(snapshot.public)

    @strawberry.field(description="Published posts, newest first (a cursor connection).")
    def posts(
        self, info: Info[Any, Any], first: int = DEFAULT_PER_PAGE, after: str | None = None
    ) -> PostConnection:
        context = context_of(info)
        with cursor_named_after():
            page = context.posts.list_published(page_params(first, after))
        return PostConnection.from_page(page)

    @strawberry.field(description="The caller's own user (UNAUTHENTICATED without a token).")
    def me(self, info: Info[Any, Any]) -> UserNode | None:
        context = context_of(info)
        viewer = context.require_viewer()  # no scope: `email` needs `profile`
        return user_from_snapshot(context, context.users.read(viewer.public_id))
