"""Business rules for posts: authorship, draft visibility, publishing, soft deletion."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
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
from app.posts.slugs import is_well_formed, make_slug
from app.users.models import User
from app.users.repository import UserRepository

POST_AGGREGATE = "post"
POST_FIELDS = ("title", "body", "status")
POST_KIND = "post"  # cache namespace
# A user's post counts (`meta.total` of /api/users/{id}/posts), cached under a per-user
# generation that every write changing them bumps (app/core/cache.py).
USER_POSTS_GEN = "user_posts_gen"
USER_POST_COUNT_KIND = "user_post_count"
PUBLISHED, ALL = "published", "all"  # what others see; what the author and admins see


@dataclass(frozen=True)
class PostSnapshot:
    """A post as read through the cache: enough to authorise and to answer a GET."""

    author_id: int
    status: str
    version: int
    public: dict[str, Any]


def post_cache_data(post: Post) -> dict[str, Any]:
    return {"author": post.author_id, "status": post.status, "public": public_post(post)}


def anonymous_view(data: dict[str, Any]) -> dict[str, Any] | None:
    """A cached post as an anonymous reader sees it: None for a draft (a 404 for them) or an
    entry `read` would reload (no slug yet). The fast lane (app/core/fast_reads.py) serves it."""
    if data["status"] == "draft" or data["public"].get("slug") is None:
        return None
    return cast(dict[str, Any], data["public"])


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
        if entry is not None and entry["d"]["public"].get("slug") is None:
            entry = None  # cached before its slug was backfilled (or in an older shape): reload
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

    def read_by_slug(self, slug: str, *, viewer: Principal | None) -> PostSnapshot:
        """`read` by slug: same cache entry, visibility rule and 404 (also for a malformed slug)."""
        public_id = self.posts.public_id_by_slug(slug) if is_well_formed(slug) else None
        if public_id is None:
            raise NotFound("No such post.")
        return self.read(public_id, viewer=viewer)

    def refresh_cache(self, public_id: uuid.UUID) -> bool:
        """Write-through: store the current state (a no-op when the cache holds a newer one)."""
        post = self.posts.get(public_id)
        if post is None:
            return False
        self.cache.fill(POST_KIND, public_id, post.version, post_cache_data(post))
        return True

    def _after_write(self, uow: UnitOfWork, post: Post, *, counts_changed: bool) -> None:
        pid, version = post.public_id, post.version
        uow.after_commit(lambda: self.cache.invalidate(POST_KIND, [(pid, version)]))
        uow.after_commit(lambda: enqueue("cache.refresh_post", str(pid)))
        if counts_changed:
            self._after_count_change(uow, post.author.public_id)

    def _after_count_change(self, uow: UnitOfWork, author_public_id: uuid.UUID) -> None:
        """After the commit: a new generation for the author's counts now (the next read, from
        any process, recounts), then a worker writes the fresh counts through."""
        uow.after_commit(lambda: self.cache.bump(USER_POSTS_GEN, [author_public_id]))
        uow.after_commit(lambda: enqueue("cache.refresh_user_post_counts", str(author_public_id)))

    def author_total(self, author: User, *, include_drafts: bool, limit: int) -> tuple[int, bool]:
        """Cache-aside `(total, is_estimate)` of the author's list: cached under the current
        generation, else counted (the generation is read *before* the count) and filled if no
        write bumped the generation meanwhile."""
        part = ALL if include_drafts else PUBLISHED
        entry, generation = self.cache.read_aggregate(
            USER_POSTS_GEN, USER_POST_COUNT_KIND, author.public_id, part
        )
        # Served only if counted under the same exact-count limit (a config change recounts).
        if entry is not None and entry["d"].get("limit") == limit:
            return int(entry["d"]["total"]), bool(entry["d"]["estimate"])
        total, estimate = self.posts.count_by_author(
            author.id, include_drafts=include_drafts, exact_count_limit=limit
        )
        if generation is not None:
            self.cache.fill_aggregate(
                USER_POSTS_GEN,
                USER_POST_COUNT_KIND,
                author.public_id,
                generation,
                {part: {"total": total, "estimate": estimate, "limit": limit}},
            )
        return total, estimate

    def refresh_post_counts(self, author_public_id: uuid.UUID, *, limit: int) -> bool:
        """Write-through of both counts; False when the author is gone, the cache cannot take
        it, or a newer write bumped the generation while counting (its own refresh follows)."""
        generation = self.cache.generation(USER_POSTS_GEN, author_public_id)
        author = self.users.get(author_public_id)
        if author is None or generation is None:
            return False
        parts = {}
        for part in (PUBLISHED, ALL):
            total, estimate = self.posts.count_by_author(
                author.id, include_drafts=part == ALL, exact_count_limit=limit
            )
            parts[part] = {"total": total, "estimate": estimate, "limit": limit}
        return self.cache.fill_aggregate(
            USER_POSTS_GEN, USER_POST_COUNT_KIND, author_public_id, generation, parts
        )

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
        return self.posts.page_by_author(
            author,
            params,
            self.codec,
            include_drafts=drafts,
            total=lambda: self.author_total(
                author, include_drafts=drafts, limit=params.exact_count_limit
            ),
        )

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
        public_id = uuid.uuid4()
        post = Post(
            public_id=public_id,
            author=author,
            title=data["title"],
            slug=make_slug(data["title"], public_id),
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
                    **{f: getattr(post, f) for f in (*POST_FIELDS, "slug", "published_at")},
                },
            )
            uow.after_commit(lambda: enqueue("cache.refresh_post", str(post.public_id)))
            self._after_count_change(uow, author.public_id)
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
            if post.slug is None:
                # A post from before slugs (expand window): it gets one now, from its new title,
                # unless the backfill gave it one since we read it (then that one stays).
                post.slug = sa.func.coalesce(Post.slug, make_slug(post.title, post.public_id))
            post.updated_at = now
            post.version += 1
            uow.record(
                "post.updated",
                aggregate_type=POST_AGGREGATE,
                aggregate_id=post.public_id,
                version=post.version,
                values=values,
            )
            self._after_write(uow, post, counts_changed="status" in values)
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
            self._after_write(uow, post, counts_changed=True)


def _may_edit(viewer: Principal | None, post: Post) -> bool:
    return viewer is not None and viewer.may_act_for(post.author_id)
