"""Business rules for posts: authorship, draft visibility, publishing, soft deletion."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.core.cache import Cache
from app.core.conditional import check_version
from app.core.db import utcnow
from app.core.errors import Forbidden, NotFound
from app.core.pagination import CursorCodec, Page, PageParams
from app.core.security import Principal
from app.core.tasks import enqueue
from app.core.uow import UnitOfWork
from app.posts.models import Post
from app.posts.repository import PostRepository
from app.posts.representation import public_post
from app.users.repository import UserRepository

POST_AGGREGATE = "post"
POST_FIELDS = ("title", "body", "status")
POST_KIND = "post"  # cache namespace


@dataclass(frozen=True)
class PostSnapshot:
    """A post as read through the cache: enough to authorise and to answer a GET."""

    author_id: int
    status: str
    version: int
    public: dict[str, Any]


def post_cache_data(post: Post) -> dict[str, Any]:
    return {"author": post.author_id, "status": post.status, "public": public_post(post)}


class PostService:
    def __init__(self, session: Session, *, codec: CursorCodec, cache: Cache | None = None) -> None:
        self.session = session
        self.posts = PostRepository(session)
        self.users = UserRepository(session)
        self.codec = codec
        self.cache = cache or Cache(None, ttl=0)

    def read(self, public_id: uuid.UUID, *, viewer: Principal | None) -> PostSnapshot:
        """Cache-aside read with the same visibility rule as `get` (drafts: author, admins)."""
        entry = self.cache.read(POST_KIND, public_id)
        if entry is None:
            post = self.posts.get(public_id)
            if post is None:
                raise NotFound("No such post.")
            data = post_cache_data(post)
            self.cache.fill(POST_KIND, public_id, post.version, data)
            version = post.version
        else:
            data, version = entry["d"], entry["v"]
        snapshot = PostSnapshot(data["author"], data["status"], version, data["public"])
        if snapshot.status == "draft" and not (viewer and viewer.may_act_for(snapshot.author_id)):
            raise NotFound("No such post.")
        return snapshot

    def refresh_cache(self, public_id: uuid.UUID) -> bool:
        """Write-through: store the current state (a no-op when the cache holds a newer one)."""
        post = self.posts.get(public_id)
        if post is None:
            return False
        self.cache.fill(POST_KIND, public_id, post.version, post_cache_data(post))
        return True

    def _after_write(self, uow: UnitOfWork, post: Post) -> None:
        pid, version = post.public_id, post.version
        uow.after_commit(lambda: self.cache.invalidate(POST_KIND, [(pid, version)]))
        uow.after_commit(lambda: enqueue("cache.refresh_post", str(pid)))

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
            uow.after_commit(lambda: enqueue("cache.refresh_post", str(post.public_id)))
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
            self._after_write(uow, post)
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
            self._after_write(uow, post)


def _may_edit(viewer: Principal | None, post: Post) -> bool:
    return viewer is not None and viewer.may_act_for(post.author_id)
