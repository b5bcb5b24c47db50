"""OAuth 2.0 tables: registered apps (`oauth_clients`), authorization codes (`oauth_codes`)
and grants (`oauth_grants`: one token family an app holds for a user, revocable at once)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime, utcnow

_BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
CLIENT_ID_MAX = 64
NAME_MAX = 100
GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class OAuthClient(Base):
    """A third-party app. Its secret (confidential apps only) is kept as a SHA-256 digest: it is
    48 random characters, so a slow hash would add nothing but work on every token request."""

    __tablename__ = "oauth_clients"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(sa.String(CLIENT_ID_MAX), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    owner_id: Mapped[int] = mapped_column(
        sa.ForeignKey("users.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    redirect_uris: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    scopes: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    confidential: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    # authlib's ClientMixin: what it asks of a client while it runs a grant.
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # the authorize request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes (all registered ones when none are asked); None (invalid_scope)
        when any requested scope is not registered for this app: never silently widened."""
        if not scope:
            return " ".join(self.scopes)
        asked = scope.split()
        return " ".join(dict.fromkeys(asked)) if set(asked) <= set(self.scopes) else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris  # exact match, never a prefix

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret_hash is not None and hmac.compare_digest(
            self.client_secret_hash, secret_digest(client_secret)
        )

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in SECRET_METHODS if self.confidential else method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


class OAuthCode(Base):
    """An authorization code: its SHA-256 (never the code), single use (`used_at`), bound to
    its client, redirect URI and PKCE challenge; `family` names the tokens its exchange issued,
    so a replay can revoke them."""

    __tablename__ = "oauth_codes"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    client_pk: Mapped[int] = mapped_column(
        sa.ForeignKey("oauth_clients.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"))
    redirect_uri: Mapped[str] = mapped_column(sa.Text)
    scope: Mapped[str] = mapped_column(sa.Text, default="")
    code_challenge: Mapped[str] = mapped_column(sa.String(128))
    code_challenge_method: Mapped[str] = mapped_column(sa.String(10))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    family: Mapped[str | None] = mapped_column(sa.String(32), default=None)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class OAuthGrant(Base):
    """What a user allowed an app: one token family (the `fam` claim of every access and refresh
    token the app got from one code, through every rotation)."""

    __tablename__ = "oauth_grants"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    family: Mapped[str] = mapped_column(sa.String(32), unique=True)
    client_pk: Mapped[int] = mapped_column(
        sa.ForeignKey("oauth_clients.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    scope: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
