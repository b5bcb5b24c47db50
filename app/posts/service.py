"""Business rules for posts: authorship, draft visibility, publishing, soft deletion."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy.orm import Session

from app.core.conditional import check_version
from app.core.db import utcnow
from app.core.errors import Forbidden, NotFound
from app.core.pagination import CursorCodec, Page, PageParams
from app.core.security import Principal
from app.core.uow import UnitOfWork
from app.posts.models import Post
from app.posts.repository import PostRepository
from app.users.repository import UserRepository

POST_AGGREGATE = "post"
POST_FIELDS = ("title", "body", "status")


class PostService:
    def __init__(self, session: Session, *, codec: CursorCodec) -> None:
        self.session = session
        self.posts = PostRepository(session)
        self.users = UserRepository(session)
        self.codec = codec

    # Reads -----------------------------------------------------------------------------------

    def get(self, public_id: uuid.UUID, *, viewer: Principal | None) -> Post:
        """A post the viewer may see; someone else's draft is as absent as a missing post."""
        post = self.posts.get(public_id)
        if post is None or (post.status == "draft" and not _may_edit(viewer, post)):
            raise NotFound("No such post.")
        return post

    def list_published(self, params: PageParams) -> Page[Post]:
        return self.posts.page_published(params, self.codec)

    def list_by_author(
        self, author_public_id: uuid.UUID, params: PageParams, *, viewer: Principal | None
    ) -> Page[Post]:
        author = self.users.get(author_public_id)
        if author is None:
            raise NotFound("No such user.")
        drafts = viewer is not None and viewer.may_act_for(author.id)
        return self.posts.page_by_author(author, params, self.codec, include_drafts=drafts)

    # Writes ----------------------------------------------------------------------------------

    def create(
        self, author_public_id: uuid.UUID, data: dict[str, Any], *, actor: Principal
    ) -> Post:
        author = self.users.get(author_public_id)
        if author is None:
            raise NotFound("No such user.")
        if not actor.may_act_for(author.id):
            raise Forbidden("You may only post as yourself.")
        now = utcnow()
        status = data.get("status", "draft")
        post = Post(
            public_id=uuid.uuid4(),
            author=author,
            title=data["title"],
            body=data.get("body", ""),
            status=status,
            published_at=now if status == "published" else None,
            created_at=now,
            updated_at=now,
            version=1,
        )
        with UnitOfWork(self.session, actor_id=actor.public_id) as uow:
            self.posts.add(post)
            self.session.flush()
            uow.record(
                "post.created",
                aggregate_type=POST_AGGREGATE,
                aggregate_id=post.public_id,
                version=post.version,
                values={
                    "author_id": author.public_id,
                    **{f: getattr(post, f) for f in (*POST_FIELDS, "published_at")},
                },
            )
        return post

    def update(
        self,
        public_id: uuid.UUID,
        changes: dict[str, Any],
        *,
        actor: Principal,
        if_match: Collection[int] | None = None,
    ) -> Post:
        post = self.get(public_id, viewer=actor)
        if not _may_edit(actor, post):
            raise Forbidden("You may only change your own posts.")
        check_version(post.version, if_match)
        values = {k: v for k, v in changes.items() if getattr(post, k) != v}
        if not values:
            return post
        now = utcnow()
        if values.get("status") == "published":
            values["published_at"] = now
        elif values.get("status") == "draft":
            values["published_at"] = None
        with UnitOfWork(self.session, actor_id=actor.public_id) as uow:
            for key, value in values.items():
                setattr(post, key, value)
            post.updated_at = now
            post.version += 1
            uow.record(
                "post.updated",
                aggregate_type=POST_AGGREGATE,
                aggregate_id=post.public_id,
                version=post.version,
                values=values,
            )
        return post

    def delete(
        self, public_id: uuid.UUID, *, actor: Principal, if_match: Collection[int] | None = None
    ) -> None:
        post = self.get(public_id, viewer=actor)
        if not _may_edit(actor, post):
            raise Forbidden("You may only delete your own posts.")
        check_version(post.version, if_match)
        now = utcnow()
        with UnitOfWork(self.session, actor_id=actor.public_id) as uow:
            post.deleted_at = now
            post.updated_at = now
            post.version += 1
            uow.record(
                "post.deleted",
                aggregate_type=POST_AGGREGATE,
                aggregate_id=post.public_id,
                version=post.version,
                values={"deleted_at": now},
            )


def _may_edit(viewer: Principal | None, post: Post) -> bool:
    return viewer is not None and viewer.may_act_for(post.author_id)
