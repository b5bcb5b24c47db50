"""Every query on users."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session, defer

from app.core.db import INCLUDE_DELETED
from app.core.pagination import CursorCodec, Page, PageParams, paginate
from app.users.models import User


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, public_id: uuid.UUID) -> User | None:
        return self.session.scalar(sa.select(User).where(User.public_id == public_id))

    def get_many(self, public_ids: Collection[uuid.UUID]) -> list[User]:
        """The live users among these ids, in one query."""
        if not public_ids:
            return []
        stmt = sa.select(User).where(User.public_id.in_(list(public_ids)))
        return list(self.session.scalars(stmt.options(defer(User.password_hash))))

    def get_any(self, public_id: uuid.UUID) -> User | None:
        """The user, soft-deleted or not (history outlives a delete)."""
        stmt = sa.select(User).where(User.public_id == public_id)
        return self.session.scalar(stmt.execution_options(**{INCLUDE_DELETED: True}))

    def get_by_email(self, email: str) -> User | None:
        return self.session.scalar(
            sa.select(User).where(sa.func.lower(User.email) == email.lower())
        )

    def taken(
        self,
        *,
        email: str | None = None,
        username: str | None = None,
        exclude_id: int | None = None,
    ) -> list[str]:
        """Which of the given email/username a live user other than `exclude_id` already has."""
        clauses = []
        if email is not None:
            clauses.append(sa.func.lower(User.email) == email.lower())
        if username is not None:
            clauses.append(sa.func.lower(User.username) == username.lower())
        if not clauses:
            return []
        stmt = sa.select(User.email, User.username).where(sa.or_(*clauses))
        if exclude_id is not None:
            stmt = stmt.where(User.id != exclude_id)
        fields: list[str] = []
        for row_email, row_username in self.session.execute(stmt.limit(2)):
            if email is not None and row_email.lower() == email.lower():
                fields.append("email")
            if username is not None and row_username.lower() == username.lower():
                fields.append("username")
        return sorted(set(fields))

    def most_recent(self, limit: int, *, batch: int) -> Iterator[User]:
        """The `limit` newest live users, streamed `batch` rows at a time (cache warming)."""
        stmt = sa.select(User).order_by(User.created_at.desc(), User.id.desc()).limit(limit)
        return iter(self.session.scalars(stmt.execution_options(yield_per=batch)))

    def add(self, user: User) -> User:
        self.session.add(user)
        return user

    def page(self, params: PageParams, codec: CursorCodec) -> Page[User]:
        stmt = sa.select(User).options(defer(User.password_hash))
        return paginate(
            self.session,
            stmt,
            sort_columns=(User.created_at, User.id),
            params=params,
            codec=codec,
            scope="users",
        )
