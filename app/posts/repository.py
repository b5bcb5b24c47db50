"""Every query on posts."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, contains_eager

from app.core.pagination import CursorCodec, Page, PageParams, paginate
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
        self, author: User, params: PageParams, codec: CursorCodec, *, include_drafts: bool
    ) -> Page[Post]:
        stmt = self._with_author().where(Post.author_id == author.id)
        count = sa.select(Post.id).where(Post.author_id == author.id)
        if not include_drafts:
            stmt = stmt.where(Post.status == "published")
            count = count.where(Post.status == "published")
        return paginate(
            self.session,
            stmt,
            sort_columns=(Post.created_at, Post.id),
            params=params,
            codec=codec,
            scope=f"user-posts:{author.public_id}:{int(include_drafts)}",
            count_stmt=count,
        )

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
