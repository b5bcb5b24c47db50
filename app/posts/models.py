"""The posts table."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base, PublicEntityMixin, UTCDateTime
from app.posts.slugs import SLUG_MAX
from app.users.models import User

TITLE_MAX = 200
BODY_MAX = 100_000
STATUSES = ("draft", "published")


class Post(PublicEntityMixin, Base):
    __tablename__ = "posts"

    author_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    title: Mapped[str] = mapped_column(sa.String(TITLE_MAX))
    body: Mapped[str] = mapped_column(sa.Text, default="")
    status: Mapped[str] = mapped_column(sa.String(16), default="draft")
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Set on create and never changed (app/posts/slugs.py); NOT NULL from migration 0005.
    slug: Mapped[str] = mapped_column(sa.String(SLUG_MAX), nullable=False)

    # `raise` makes an accidental lazy load (an N+1) an error instead of a slow page.
    author: Mapped[User] = relationship(lazy="raise", innerjoin=True)

    __table_args__ = (
        sa.CheckConstraint("status IN ('draft', 'published')", name="status_valid"),
        # GET /api/posts: live published posts, newest first (keyset on created_at, id).
        sa.Index(
            "ix_posts_published_created",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
            sqlite_where=sa.text("deleted_at IS NULL AND status = 'published'"),
            postgresql_where=sa.text("deleted_at IS NULL AND status = 'published'"),
        ),
        # GET /api/posts/by-slug/{slug}; unique from migration 0003 on (NULLs never collide).
        sa.Index("uq_posts_slug", "slug", unique=True),
        # GET /api/users/{id}/posts, and the author's posts on user deletion.
        sa.Index(
            "ix_posts_author_created",
            "author_id",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Post {self.public_id} {self.status}>"
