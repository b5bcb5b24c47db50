"""What one GraphQL request's resolvers share: the caller, the services, the batches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from strawberry.types import Info

from app.core.errors import InsufficientScope, NotFound, Unauthenticated
from app.core.pagination import Page
from app.core.security import Principal
from app.posts.models import Post
from app.posts.service import PostService
from app.users.models import User
from app.users.service import UserService

if TYPE_CHECKING:
    from app.auth.guard import TokenCaller


class AuthorBatch:
    """The authors of posts resolved together, loaded for all at once on the first `author`
    asked of any (no N+1). Execution goes depth first, so every id must be known before the
    first is asked: a page registers its posts' authors as it is built."""

    def __init__(self, ids: list[uuid.UUID] | None = None) -> None:
        self.ids: list[uuid.UUID] = list(ids or [])
        self._rows: dict[uuid.UUID, User] | None = None
        self.group: AuthorGroup | None = None  # the loaded authors, for their own `posts`

    def row(self, context: RequestContext, author_id: uuid.UUID) -> User | None:
        if self._rows is None:
            self._rows = context.users.many(self.ids)
            self.group = AuthorGroup([(u.id, u.public_id) for u in self._rows.values()])
        return self._rows.get(author_id)


@dataclass
class AuthorGroup:
    """Users resolved together (a page of `users`, or one user): the first page of their posts
    is loaded for all of them at once, on the first `posts` asked of any (no N+1)."""

    authors: list[tuple[int, uuid.UUID]] = field(default_factory=list)
    _pages: dict[int, dict[int, Page[Post]]] = field(default_factory=dict)
    _post_authors: AuthorBatch | None = None

    def first_page(self, context: RequestContext, author_id: int, per_page: int) -> Page[Post]:
        pages = self._pages.get(per_page)
        if pages is None:
            pages = self._pages[per_page] = context.posts.first_pages(
                self.authors, per_page, viewer=context.viewer
            )
        return pages[author_id]

    def post_authors(self) -> AuthorBatch:
        """One batch for the authors of every post of the group's pages (the group itself)."""
        if self._post_authors is None:
            self._post_authors = AuthorBatch([public for _, public in self.authors])
        return self._post_authors


@dataclass
class RequestContext:
    """Built by the view once per request, after the pipeline identified (and, for a token,
    verified) the caller."""

    viewer: Principal | None
    caller: TokenCaller | None
    address: str
    # What ran, once the document is parsed (for the access line and metrics).
    operation_name: str | None = None
    operation_type: str | None = None

    @cached_property
    def users(self) -> UserService:
        return UserService.from_app()

    @cached_property
    def posts(self) -> PostService:
        return PostService.from_app()

    def require_viewer(self, scope: str | None = None) -> Principal:
        """The caller, for what needs one (`me`, mutations): UNAUTHENTICATED otherwise; with
        `scope` (the field's one declaration of it), FORBIDDEN for a token without it."""
        if self.viewer is None:
            raise Unauthenticated("Authentication is required: send Authorization: Bearer <token>.")
        if scope is not None and not self.viewer.has(scope):
            raise InsufficientScope(scope)
        return self.viewer

    def claims(self) -> dict[str, Any]:
        return self.caller.claims or {} if self.caller is not None else {}


def context_of(info: Info[Any, Any]) -> RequestContext:
    context: RequestContext = info.context
    return context


def public_id(value: str) -> uuid.UUID:
    """A resource id argument: a malformed id is as unknown as a missing one (404, as in REST)."""
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise NotFound("The resource was not found.") from exc
