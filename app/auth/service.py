"""Login, token refresh with rotation, and logout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.blocklist import TokenBlocklist
from app.core.errors import Unauthenticated
from app.core.security import ADMIN_SCOPE, passwords
from app.users.models import User
from app.users.repository import UserRepository

BAD_CREDENTIALS = "Invalid email or password."
TOKEN_REVOKED = "The token has been revoked."  # noqa: S105 - a message, not a secret


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret


def scopes_for(user: User) -> list[str]:
    return [ADMIN_SCOPE] if user.is_admin else []


class AuthService:
    def __init__(self, session: Session, *, blocklist: TokenBlocklist, access_ttl: int) -> None:
        self.session = session
        self.users = UserRepository(session)
        self.blocklist = blocklist
        self.access_ttl = access_ttl

    def login(self, email: str, password: str) -> TokenPair:
        user = self.users.get_by_email(email)
        # Verify against a dummy hash for unknown emails: same work, same answer, no enumeration.
        valid = passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid:
            raise Unauthenticated(BAD_CREDENTIALS)
        return self._issue(user)

    def refresh(self, user: User, claims: dict[str, Any]) -> TokenPair:
        """Rotate: the presented refresh token is revoked and a new pair is issued."""
        self._revoke(claims)
        return self._issue(user)

    def logout(self, claims: dict[str, Any]) -> None:
        self._revoke(claims)

    def _issue(self, user: User) -> TokenPair:
        identity = str(user.public_id)
        claims = {"scope": scopes_for(user)}
        access = create_access_token(identity=identity, additional_claims=claims)
        refresh = create_refresh_token(identity=identity, additional_claims=claims)
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=self.access_ttl)

    def _revoke(self, claims: dict[str, Any]) -> None:
        """Spend the token exactly once: a concurrent request that revoked it first wins, so a
        refresh token can never be rotated into two pairs (and no clash is ever a 500)."""
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        try:
            if not self.blocklist.revoke(claims["jti"], expires_at):
                raise Unauthenticated(TOKEN_REVOKED)
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Unauthenticated(TOKEN_REVOKED) from None
        self._mirror(claims)

    def _mirror(self, claims: dict[str, Any]) -> None:
        self.blocklist.mirror(claims["jti"], datetime.fromtimestamp(claims["exp"], UTC))
