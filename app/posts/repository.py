"""Every query on posts."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, contains_eager

from app.core.db import INCLUDE_DELETED
from app.core.pagination import CursorCodec, Page, PageParams, count_total, page_of, paginate
from app.posts.models import Post
from app.users.models import User


class PostRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _with_author(self) -> sa.Select[Post]:
        # One query for the post and its author's public id: no lazy load, no N+1.
        return (
            sa.select(Post)
            .join(Post.author)
            .options(contains_eager(Post.author).load_only(User.public_id, User.id))
        )

    def get(self, public_id: uuid.UUID) -> Post | None:
        return self.session.scalar(self._with_author().where(Post.public_id == public_id))

    def get_any(self, public_id: uuid.UUID) -> Post | None:
        """The post with its author, soft-deleted or not (history outlives a delete)."""
        stmt = self._with_author().where(Post.public_id == public_id)
        return self.session.scalar(stmt.execution_options(**{INCLUDE_DELETED: True}))

    def public_id_by_slug(self, slug: str) -> uuid.UUID | None:
        """The public id of the live post with this slug (one lookup on uq_posts_slug)."""
        return self.session.scalar(sa.select(Post.public_id).where(Post.slug == slug))

    def most_recent(self, limit: int, *, batch: int) -> Iterator[Post]:
        """The `limit` newest live posts with their authors, `batch` rows at a time (warming)."""
        stmt = self._with_author().order_by(Post.created_at.desc(), Post.id.desc()).limit(limit)
        return iter(self.session.scalars(stmt.execution_options(yield_per=batch)))

    def add(self, post: Post) -> Post:
        self.session.add(post)
        return post

    def page_published(self, params: PageParams, codec: CursorCodec) -> Page[Post]:
        stmt = self._with_author().where(Post.status == "published")
        count = sa.select(Post.id).where(Post.status == "published")
        return paginate(
            self.session,
            stmt,
            sort_columns=(Post.created_at, Post.id),
            params=params,
            codec=codec,
            scope="posts",
            count_stmt=count,
        )

    def page_by_author(
        self,
        author: User,
        params: PageParams,
        codec: CursorCodec,
        *,
        include_drafts: bool,
        total: Callable[[], tuple[int, bool]] | None = None,
    ) -> Page[Post]:
        """One page of an author's live posts (drafts too if asked); `total` overrides the count
        (the service serves it from the cache, see `count_by_author`)."""
        stmt = self._with_author().where(Post.author_id == author.id)
        if not include_drafts:
            stmt = stmt.where(Post.status == "published")
        count = self._by_author_count(author.id, include_drafts=include_drafts)
        return paginate(
            self.session,
            stmt,
            sort_columns=(Post.created_at, Post.id),
            params=params,
            codec=codec,
            scope=_author_scope(author.public_id, include_drafts=include_drafts),
            count_stmt=count,
            total=total,
        )

    def first_pages_by_authors(
        self,
        authors: Sequence[tuple[int, uuid.UUID]],
        per_page: int,
        codec: CursorCodec,
        *,
        drafts_of: Collection[int],
    ) -> dict[int, Page[Post]]:
        """The first keyset page of each author's live posts, in ONE query (a window function
        numbers each author's posts newest first): what `page_by_author` gives for each, the
        same cursors included. `authors` are (id, public id); `drafts_of` the ids whose drafts
        the caller may see."""
        ids = [author_id for author_id, _ in authors]
        if not ids:
            return {}
        rank = (
            sa.func.row_number()
            .over(partition_by=Post.author_id, order_by=(Post.created_at.desc(), Post.id.desc()))
            .label("rank")
        )
        visible = Post.status == "published"
        if drafts_of:
            visible = sa.or_(visible, Post.author_id.in_(list(drafts_of)))
        numbered = (
            sa.select(Post.id.label("post_id"), rank)
            .where(Post.author_id.in_(ids), visible)
            .subquery()
        )
        stmt = (
            self._with_author()
            .join(numbered, numbered.c.post_id == Post.id)
            .where(numbered.c.rank <= per_page + 1)
            .order_by(Post.author_id, numbered.c.rank)
        )
        rows: dict[int, list[Post]] = {author_id: [] for author_id in ids}
        for post in self.session.scalars(stmt):
            rows[post.author_id].append(post)
        return {
            author_id: page_of(
                rows[author_id],
                per_page,
                cursor_of=_cursor_for(
                    codec, _author_scope(public_id, include_drafts=author_id in drafts_of)
                ),
            )
            for author_id, public_id in authors
        }

    @staticmethod
    def _by_author_count(author_id: int, *, include_drafts: bool) -> sa.Select[Any]:
        count = sa.select(Post.id).where(Post.author_id == author_id)
        if not include_drafts:
            count = count.where(Post.status == "published")
        return count

    def count_by_author(
        self, author_id: int, *, include_drafts: bool, exact_count_limit: int
    ) -> tuple[int, bool]:
        """`(total, is_estimate)` of `page_by_author`'s list, exactly as its offset pages count."""
        base = self._by_author_count(author_id, include_drafts=include_drafts)
        return count_total(self.session, base, exact_count_limit)

    def soft_delete_by_author(self, author_id: int, when: datetime) -> list[tuple[uuid.UUID, int]]:
        """Hide every live post of an author; returns (public_id, new version) of each."""
        result = self.session.execute(
            sa.update(Post)
            .where(Post.author_id == author_id, Post.deleted_at.is_(None))
            .values(deleted_at=when, updated_at=when, version=Post.version + 1)
            .returning(Post.public_id, Post.version)
            .execution_options(synchronize_session=False)
        )
        return [(row.public_id, row.version) for row in result]


def _author_scope(public_id: uuid.UUID, *, include_drafts: bool) -> str:
    """The cursor scope of an author's list (a cursor of one list is refused by another)."""
    return f"user-posts:{public_id}:{int(include_drafts)}"


def _cursor_for(codec: CursorCodec, scope: str) -> Callable[[Post], str]:
    return lambda post: codec.encode(scope, post.created_at, post.id)
