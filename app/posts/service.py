"""Business rules for posts: authorship, draft visibility, publishing, soft deletion."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.cache import Cache, app_cache
from app.core.conditional import check_version
from app.core.db import utcnow
from app.core.errors import Forbidden, NotFound
from app.core.events import Event
from app.core.history import EventLog, Replayed, present
from app.core.http import cursor_codec
from app.core.pagination import CursorCodec, Page, PageParams
from app.core.security import Principal
from app.core.uow import UnitOfWork
from app.extensions import db
from app.posts import cache as post_cache
from app.posts.cache import (
    ALL,
    PUBLISHED,
    USER_POST_COUNT_KIND,
    USER_POSTS_GEN,
    PostSnapshot,
    count_entry,
)
from app.posts.models import Post
from app.posts.repository import PostRepository
from app.posts.slugs import is_well_formed, make_slug
from app.users.models import User
from app.users.repository import UserRepository

POST_AGGREGATE = "post"
POST_FIELDS = ("title", "body", "status")
# What post.created records beside the author: every other field of the representation.
CREATED_FIELDS = (*POST_FIELDS, "slug", "published_at", "created_at", "updated_at")


class PostService:
    """Writes record events (`post.created`, ...); what follows them after the commit (cache
    tombstones, write-through, count generations) is app/events/handlers.py's table."""

    def __init__(self, session: Session, *, codec: CursorCodec, cache: Cache | None = None) -> None:
        self.session = session
        self.posts = PostRepository(session)
        self.users = UserRepository(session)
        self.codec = codec
        self.cache = cache or Cache(None, ttl=0)

    @classmethod
    def from_app(cls) -> PostService:
        """The service on this app context's session, cache and cursor codec (routes, tasks
        and the CLI all build it here)."""
        return cls(db.session(), codec=cursor_codec(), cache=app_cache())

    def read(self, public_id: uuid.UUID, *, viewer: Principal | None) -> PostSnapshot:
        """Cache-aside read with the same visibility rule as `get` (drafts: author, admins)."""
        snapshot = post_cache.read(self.cache, public_id)
        if snapshot is None:
            post = self.posts.get(public_id)
            if post is None:
                raise NotFound("No such post.")
            snapshot = post_cache.fill(self.cache, post)
        if snapshot.status == "draft" and not (
            viewer and viewer.sees_drafts_of(snapshot.author_id)
        ):
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
        post_cache.fill(self.cache, post)
        return True

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
                {part: count_entry(total, estimate, limit)},
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
            parts[part] = count_entry(total, estimate, limit)
        return self.cache.fill_aggregate(
            USER_POSTS_GEN, USER_POST_COUNT_KIND, author_public_id, generation, parts
        )

    # Reads -----------------------------------------------------------------------------------

    def get(self, public_id: uuid.UUID, *, viewer: Principal | None) -> Post:
        """A post the viewer may see; someone else's draft is as absent as a missing post."""
        post = self.posts.get(public_id)
        if post is None or (
            post.status == "draft" and not (viewer and viewer.sees_drafts_of(post.author_id))
        ):
            raise NotFound("No such post.")
        return post

    def _editable(self, public_id: uuid.UUID, actor: Principal, refusal: str) -> Post:
        """The post `actor` may edit, with one permission check: someone else's draft is a 404
        (as absent as for a reader), someone else's published post a 403."""
        post = self.posts.get(public_id)
        if post is None:
            raise NotFound("No such post.")
        if not _may_edit(actor, post):
            if post.status == "draft":
                raise NotFound("No such post.")
            raise Forbidden(refusal)
        return post

    def list_published(self, params: PageParams) -> Page[Post]:
        return self.posts.page_published(params, self.codec)

    def list_by_author(
        self, author_public_id: uuid.UUID, params: PageParams, *, viewer: Principal | None
    ) -> Page[Post]:
        author = self.users.get(author_public_id)
        if author is None:
            raise NotFound("No such user.")
        drafts = viewer is not None and viewer.sees_drafts_of(author.id)
        return self.posts.page_by_author(
            author,
            params,
            self.codec,
            include_drafts=drafts,
            total=lambda: self.author_total(
                author, include_drafts=drafts, limit=params.exact_count_limit
            ),
        )

    def first_pages(
        self, authors: Sequence[tuple[int, uuid.UUID]], per_page: int, *, viewer: Principal | None
    ) -> dict[int, Page[Post]]:
        """The first page of each of these live authors' posts, in one query (a page of users
        with their posts costs the same whatever its length): what `list_by_author` gives
        each in keyset mode, drafts too where the viewer may see them. `authors` are (id,
        public id) of users the caller has already read."""
        drafts_of = {a for a, _ in authors if viewer is not None and viewer.sees_drafts_of(a)}
        return self.posts.first_pages_by_authors(authors, per_page, self.codec, drafts_of=drafts_of)

    # History ---------------------------------------------------------------------------------

    def events(self, public_id: uuid.UUID, params: PageParams, *, viewer: Principal) -> Page[Event]:
        """The post's audit trail, oldest first (its author, admins)."""
        self._history_reader(public_id, viewer)
        return EventLog(self.session).page(POST_AGGREGATE, public_id, params, self.codec)

    def as_of(self, public_id: uuid.UUID, at: datetime, *, viewer: Principal) -> Replayed:
        """The post as it was at `at`, rebuilt from its events alone (404 before it existed or
        once deleted; 422 before the history kept)."""
        self._history_reader(public_id, viewer)
        return present(EventLog(self.session).state_at(POST_AGGREGATE, public_id, at), "post")

    def as_of_slug(
        self, slug: str, at: datetime, *, viewer: Principal
    ) -> tuple[uuid.UUID, Replayed]:
        """`as_of` by slug (a live post's; anything else is 404), with the post's id."""
        public_id = self.posts.public_id_by_slug(slug) if is_well_formed(slug) else None
        if public_id is None:
            raise NotFound("No such post.")
        return public_id, self.as_of(public_id, at, viewer=viewer)

    def _history_reader(self, public_id: uuid.UUID, viewer: Principal) -> Post:
        """The post whose history `viewer` may read: the author's, or any for an admin, even
        once deleted. Someone else's is 403, or 404 when it is a draft or deleted (as absent as
        for a reader)."""
        post = self.posts.get_any(public_id)
        if post is None:
            raise NotFound("No such post.")
        if not viewer.sees_drafts_of(post.author_id):
            if post.status == "draft" or post.deleted_at is not None:
                raise NotFound("No such post.")
            raise Forbidden("Only the author and admins may read a post's history.")
        return post

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
                    **{f: getattr(post, f) for f in CREATED_FIELDS},
                },
                refs={"author_id": author.public_id},
                occurred_at=now,
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
        post = self._editable(public_id, actor, "You may only change your own posts.")
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
                values={**values, "updated_at": now},
                refs={"author_id": post.author.public_id},
                occurred_at=now,
            )
        return post

    def delete(
        self, public_id: uuid.UUID, *, actor: Principal, if_match: Collection[int] | None = None
    ) -> None:
        post = self._editable(public_id, actor, "You may only delete your own posts.")
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
                values={"deleted_at": now, "updated_at": now},
                refs={"author_id": post.author.public_id},
                occurred_at=now,
            )


def _may_edit(viewer: Principal | None, post: Post) -> bool:
    return viewer is not None and viewer.may_act_for(post.author_id)
