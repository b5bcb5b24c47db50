"""Third-party apps: their registration, the codes and grants the authorization server keeps,
and the user's view of what they allowed (contract §9).

A grant is one token family: the `fam` claim of every token an app got from one code, through
every rotation. Ending a grant revokes its family in the shared blocklist (app/auth/blocklist.py),
the machinery that already ends logins everywhere, so every process refuses its tokens at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.blocklist import TokenBlocklist
from app.core.errors import NotFound, ValidationFailed
from app.core.redis_client import get_redis
from app.core.security import USER_SCOPES, Principal
from app.core.text import normalise_email
from app.extensions import db
from app.oauth.models import OAuthClient, OAuthCode, OAuthGrant, secret_digest
from app.oauth.repository import OAuthRepository
from app.users.models import User
from app.users.repository import UserRepository

CODE_TTL_SECONDS = 60  # contract §9: a code lives at most a minute
CODE_KEEP_SECONDS = 86400  # an expired code's row, kept a day: a replay still revokes its tokens
CODE_PURGE_SECONDS = 3600.0  # how often beat purges the older ones
NATIVE_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Registered:
    client: OAuthClient
    client_secret: str | None  # shown once, for a confidential app


@dataclass(frozen=True)
class Authorization:
    client: OAuthClient
    scopes: list[str]
    granted_at: datetime


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be an app's redirect URI, or None: https, or a native app's loopback
    http (127.0.0.1 with any port, localhost); no fragment, no credentials."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.fragment or "#" in uri:
        return "must not have a fragment"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host in NATIVE_HOSTS:
        return None
    return "must be https://, or http://127.0.0.1:<port>/ or http://localhost for a native app"


def code_digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class OAuthService:
    def __init__(self, session: Session, *, blocklist: TokenBlocklist, refresh_ttl: int) -> None:
        self.session = session
        self.repo = OAuthRepository(session)
        self.blocklist = blocklist
        self.refresh_ttl = refresh_ttl

    @classmethod
    def from_app(cls) -> OAuthService:
        config = current_app.config
        return cls(
            db.session(),
            blocklist=TokenBlocklist(db.session(), get_redis(config["REDIS_URL"])),
            refresh_ttl=int(config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds()),
        )

    # Clients -----------------------------------------------------------------------------------

    def register(self, owner_id: int, data: dict[str, Any]) -> Registered:
        """A new app of `owner_id`; its secret (confidential apps) is returned once, kept hashed."""
        problems = [
            {"field": f"redirect_uris.{i}", "message": f"The redirect URI {problem}."}
            for i, uri in enumerate(data["redirect_uris"])
            if (problem := redirect_uri_problem(uri)) is not None
        ]
        problems += [
            {"field": "scopes", "message": f"Unknown scope '{scope}'; apps may ask for: "
             f"{', '.join(USER_SCOPES)}."}
            for scope in data["scopes"] if scope not in USER_SCOPES
        ]  # fmt: skip
        if problems:
            raise ValidationFailed(details=problems)
        secret = secrets.token_urlsafe(36) if data["confidential"] else None
        client = OAuthClient(
            # Hex: an id that began with "-" would read as an option to `flask oauth clients ...`.
            client_id=secrets.token_hex(16),
            client_secret_hash=secret_digest(secret) if secret else None,
            owner_id=owner_id,
            name=data["name"],
            redirect_uris=list(dict.fromkeys(data["redirect_uris"])),
            scopes=[s for s in USER_SCOPES if s in data["scopes"]],
            confidential=data["confidential"],
        )
        self.session.add(client)
        self.session.commit()
        return Registered(client, secret)

    def owner_by_email(self, email: str) -> User:
        """The user an operator names by email (`flask oauth clients create --owner`)."""
        user = UserRepository(self.session).get_by_email(normalise_email(email))
        if user is None:
            raise NotFound(f"No user with the email {email}.")
        return user

    def owners(self, clients: list[OAuthClient]) -> dict[int, User]:
        return {c.owner_id: u for c in clients if (u := self.repo.owner_of(c)) is not None}

    def clients(self, owner_id: int | None = None) -> list[OAuthClient]:
        return self.repo.clients(owner_id)

    def find(self, client_id: str) -> OAuthClient | None:
        return self.repo.client(client_id)

    def owned(self, client_id: str, actor: Principal) -> OAuthClient:
        """The app `actor` owns (or any, for an admin); someone else's is as absent as none."""
        client = self.repo.client(client_id)
        if client is None or not actor.may_act_for(client.owner_id):
            raise NotFound("No such app.")
        return client

    def owner_name(self, client: OAuthClient) -> str:
        owner = self.repo.owner_of(client)
        if owner is None or owner.deleted_at is not None:
            return "a deleted user"
        return owner.display_name or owner.username

    def delete(self, client: OAuthClient) -> None:
        """Delete the app; every token it holds is refused from now on, in every process."""
        self._end(self.repo.live_grants(client_pk=client.id))
        self.session.delete(client)
        self.session.commit()

    # Codes and grants (the authorization server's storage) -------------------------------------

    def save_code(self, code: str, client: OAuthClient, user_id: int, request: Any) -> None:
        data = request.payload.data
        self.session.add(
            OAuthCode(
                code_hash=code_digest(code),
                client_pk=client.id,
                user_id=user_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope or "",
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                expires_at=datetime.now(UTC) + timedelta(seconds=CODE_TTL_SECONDS),
            )
        )
        self.session.commit()

    def purge_expired_codes(self, now: datetime | None = None) -> int:
        """Delete codes expired over CODE_KEEP_SECONDS ago (periodic, idempotent). An expired
        code is refused anyway; it is kept a while so that a replay still revokes its tokens."""
        before = (now or datetime.now(UTC)) - timedelta(seconds=CODE_KEEP_SECONDS)
        removed = self.repo.purge_codes(before)
        self.session.commit()
        return removed

    def spend_code(self, code: str, client: OAuthClient) -> OAuthCode | None:
        """The code, spent now; None when unknown, another app's, expired or used before. A code
        used before has its exchange's tokens revoked (RFC 6749 §4.1.2): it leaked."""
        row = self.repo.code(code_digest(code), client.id)
        now = datetime.now(UTC)
        if row is None:
            return None
        if not self.repo.spend_code(row.id, now):
            self.session.rollback()
            self.session.refresh(row)
            if row.family is not None:
                self.end_family(row.family)
            return None
        self.session.commit()
        return row if row.expires_at > now else None

    def open_grant(self, code: OAuthCode | None, family: str, client: OAuthClient, user_id: int,
                   scope: str) -> None:  # fmt: skip
        """Record the grant a code exchange starts, and which family the code issued."""
        self.session.add(
            OAuthGrant(family=family, client_pk=client.id, user_id=user_id, scope=scope)
        )
        if code is not None:
            code.family = family
        self.session.commit()

    def grant(self, family: str) -> OAuthGrant | None:
        return self.repo.grant(family)

    def user_of(self, user_id: int) -> User | None:
        return self.session.get(User, user_id)

    def end_family(self, family: str) -> None:
        grant = self.repo.grant(family)
        self._end([grant] if grant is not None else [], extra=family)

    # The user's side ---------------------------------------------------------------------------

    def authorizations(self, user_id: int) -> list[Authorization]:
        """The apps the user allowed and has not revoked, one entry per app (scopes merged)."""
        grants = self.repo.live_grants(user_id=user_id)
        clients = self.repo.clients_by_pk({g.client_pk for g in grants})
        merged: dict[int, Authorization] = {}
        for grant in grants:
            seen = merged.get(grant.client_pk)
            scopes = set(grant.scope.split()) | set(seen.scopes if seen else [])
            merged[grant.client_pk] = Authorization(
                clients[grant.client_pk],
                [s for s in USER_SCOPES if s in scopes],
                seen.granted_at if seen else grant.created_at,
            )
        return list(merged.values())

    def revoke_authorization(self, user_id: int, client_id: str) -> None:
        """End every grant of this app for this user (404 when there is none)."""
        client = self.repo.client(client_id)
        grants = (
            self.repo.live_grants(user_id=user_id, client_pk=client.id)
            if client is not None
            else []
        )
        if not grants:
            raise NotFound("This app holds no authorization of yours.")
        self._end(grants)

    def _end(self, grants: list[OAuthGrant], extra: str | None = None) -> None:
        """Revoke these grants' token families (the blocklist row, then its Redis mirror)."""
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=self.refresh_ttl)
        families = {g.family for g in grants} | ({extra} if extra else set())
        for attempt in range(2):
            try:
                for grant in grants:
                    grant.revoked_at = now
                fresh = [f for f in sorted(families) if self.blocklist.revoke_family(f, expires_at)]
                self.session.commit()
                break
            except IntegrityError:
                # A concurrent revocation wrote a family first: the retry skips what it revoked.
                self.session.rollback()
                if attempt:
                    raise
        for family in fresh:
            self.blocklist.mirror_family(family, expires_at)
