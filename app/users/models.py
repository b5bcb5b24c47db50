"""The users table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, PublicEntityMixin

EMAIL_MAX = 254
USERNAME_MAX = 32
DISPLAY_NAME_MAX = 100
BIO_MAX = 2000


class User(PublicEntityMixin, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(sa.String(EMAIL_MAX))
    username: Mapped[str] = mapped_column(sa.String(USERNAME_MAX))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    display_name: Mapped[str] = mapped_column(sa.String(DISPLAY_NAME_MAX), default="")
    bio: Mapped[str] = mapped_column(sa.Text, default="")
    is_admin: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    # The last password change ended every login started before it (ms since the epoch)
    # except the one that made it (its token family): app/auth/service.py outlived_cutoff.
    tokens_cutoff_ms: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    tokens_kept_family: Mapped[str | None] = mapped_column(sa.String(32), default=None)

    __table_args__ = (
        # Unique among live rows only, case-insensitively: a deleted user's email is free again.
        sa.Index(
            "uq_users_email_live",
            sa.func.lower(sa.column("email")),
            unique=True,
            info={"field": "email"},  # a collision is a 409 naming this field (app/core/uow.py)
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
        sa.Index(
            "uq_users_username_live",
            sa.func.lower(sa.column("username")),
            unique=True,
            info={"field": "username"},  # a collision is a 409 naming this field (app/core/uow.py)
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
        # Keyset pages of live users, newest first.
        sa.Index(
            "ix_users_live_created",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"<User {self.public_id} {self.username!r}>"
