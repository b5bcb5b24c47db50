"""The GraphQL object types: User, Post, and their cursor connections.

Each node is built from the resource's one JSON representation (app/users/representation.py,
app/posts/representation.py: what the cache holds and REST serves), so both doors show the same
values; GraphQL spells the field names in camelCase.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from app.core.pagination import DEFAULT_PER_PAGE, Page
from app.graphql.context import AuthorBatch, AuthorGroup, context_of, public_id
from app.graphql.paging import cursor_named_after, page_params
from app.posts.models import Post
from app.posts.representation import public_post
from app.users.models import User
from app.users.representation import public_user

VERSION_HELP = "Bumped by every write; pass it as `expectedVersion`."


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


@strawberry.enum(description="A post's status: drafts are seen only by their author and admins.")
class PostStatus(enum.Enum):
    draft = "draft"
    published = "published"


@strawberry.type(name="PageInfo", description="Where a page of a connection ends.")
class PageInfo:
    has_next_page: bool
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page (the same cursors as REST's `next_cursor`)."
    )


@strawberry.type(name="Post", description="A post (drafts: their author and admins only).")
class PostNode:
    id: strawberry.ID
    author_id: strawberry.ID
    title: str
    slug: str
    body: str
    status: PostStatus
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int = strawberry.field(description=VERSION_HELP)
    _authors: strawberry.Private[AuthorBatch]

    @classmethod
    def from_view(cls, view: dict[str, Any], authors: AuthorBatch | None = None) -> PostNode:
        """From REST's representation of the post (a cache entry's or a row's)."""
        if authors is None:
            authors = AuthorBatch()
        authors.ids.append(public_id(view["author_id"]))
        return cls(
            _authors=authors,
            id=strawberry.ID(view["id"]),
            author_id=strawberry.ID(view["author_id"]),
            title=view["title"],
            slug=view["slug"],
            body=view["body"],
            status=PostStatus(view["status"]),
            published_at=_instant(view["published_at"]),
            created_at=datetime.fromisoformat(view["created_at"]),
            updated_at=datetime.fromisoformat(view["updated_at"]),
            version=view["version"],
        )

    @classmethod
    def from_row(cls, post: Post, authors: AuthorBatch | None = None) -> PostNode:
        return cls.from_view(public_post(post), authors)

    @strawberry.field(description="The post's author.")
    def author(self, info: Info[Any, Any]) -> UserNode | None:
        row = self._authors.row(context_of(info), public_id(self.author_id))
        return None if row is None else user_from_row(row, self._authors.group)


@strawberry.type(name="PostEdge")
class PostEdge:
    node: PostNode
    _cursor: strawberry.Private[Callable[[], str]]

    @strawberry.field(description="Pass as `after` to continue after this post.")
    def cursor(self) -> str:
        return self._cursor()


@strawberry.type(name="PostConnection", description="A page of posts, newest first.")
class PostConnection:
    edges: list[PostEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: Page[Post], authors: AuthorBatch | None = None) -> PostConnection:
        authors = authors or AuthorBatch()
        return cls(
            edges=[_edge(PostEdge, PostNode.from_row(p, authors), p, page) for p in page.items],
            page_info=_page_info(page),
        )


@strawberry.type(name="User", description="A user; `email` only for the user themself and admins.")
class UserNode:
    id: strawberry.ID
    username: str
    display_name: str
    bio: str
    created_at: datetime
    updated_at: datetime
    version: int = strawberry.field(description=VERSION_HELP)
    _owner: strawberry.Private[int]
    _email: strawberry.Private[Callable[[], str]]
    _group: strawberry.Private[AuthorGroup]
    _reveal_email: strawberry.Private[bool]

    @classmethod
    def from_view(
        cls,
        view: dict[str, Any],
        owner: int,
        email: Callable[[], str],
        group: AuthorGroup | None,
        *,
        reveal_email: bool = False,
    ) -> UserNode:
        """From REST's public representation of the user; `email` reads the private field."""
        if group is None:
            group = AuthorGroup()
        group.authors.append((owner, public_id(view["id"])))
        return cls(
            id=strawberry.ID(view["id"]),
            username=view["username"],
            display_name=view["display_name"],
            bio=view["bio"],
            created_at=datetime.fromisoformat(view["created_at"]),
            updated_at=datetime.fromisoformat(view["updated_at"]),
            version=view["version"],
            _owner=owner,
            _email=email,
            _group=group,
            _reveal_email=reveal_email,
        )

    @strawberry.field(description="Only for the user themself and admins; null for anyone else.")
    def email(self, info: Info[Any, Any]) -> str | None:
        viewer = context_of(info).viewer
        if self._reveal_email or (viewer is not None and viewer.sees_private_of(self._owner)):
            return self._email()
        return None

    @strawberry.field(
        description="The user's posts, newest first; drafts too for themself and admins."
    )
    def posts(
        self, info: Info[Any, Any], first: int = DEFAULT_PER_PAGE, after: str | None = None
    ) -> PostConnection:
        context = context_of(info)
        params = page_params(first, after)
        if after is None:  # the first page: one query for every user of the group
            page = self._group.first_page(context, self._owner, params.per_page)
            return PostConnection.from_page(page, self._group.post_authors())
        with cursor_named_after():
            page = context.posts.list_by_author(public_id(self.id), params, viewer=context.viewer)
        return PostConnection.from_page(page)


@strawberry.type(name="UserEdge")
class UserEdge:
    node: UserNode
    _cursor: strawberry.Private[Callable[[], str]]

    @strawberry.field(description="Pass as `after` to continue after this user.")
    def cursor(self) -> str:
        return self._cursor()


@strawberry.type(name="UserConnection", description="A page of users, newest first.")
class UserConnection:
    edges: list[UserEdge]
    page_info: PageInfo


def user_from_row(
    user: User, group: AuthorGroup | None = None, *, reveal_email: bool = False
) -> UserNode:
    """A user row (a page of `users`, posts' authors, or a write's result)."""
    return UserNode.from_view(
        public_user(user), user.id, lambda: user.email, group=group, reveal_email=reveal_email
    )


def _page_info(page: Page[Any]) -> PageInfo:
    end = page.cursor_of(page.items[-1]) if page.items and page.cursor_of else None
    return PageInfo(has_next_page=page.has_next, end_cursor=end)


def _edge(edge_type: Any, node: Any, item: Any, page: Page[Any]) -> Any:
    cursor_of = page.cursor_of
    if cursor_of is None:  # every page a repository builds has one
        raise RuntimeError("page without cursors")
    return edge_type(node=node, _cursor=lambda: cursor_of(item))


def user_connection(page: Page[Any], nodes: list[UserNode]) -> UserConnection:
    return UserConnection(
        edges=[_edge(UserEdge, n, u, page) for n, u in zip(nodes, page.items, strict=True)],
        page_info=_page_info(page),
    )
