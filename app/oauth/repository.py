"""Every query of the OAuth package."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.core.db import INCLUDE_DELETED
from app.oauth.models import OAuthClient, OAuthCode, OAuthGrant
from app.users.models import User


class OAuthRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def client(self, client_id: str) -> OAuthClient | None:
        return self.session.scalar(sa.select(OAuthClient).where(OAuthClient.client_id == client_id))

    def clients(self, owner_id: int | None = None) -> list[OAuthClient]:
        query = sa.select(OAuthClient).order_by(OAuthClient.created_at.desc(), OAuthClient.id)
        if owner_id is not None:
            query = query.where(OAuthClient.owner_id == owner_id)
        return list(self.session.scalars(query))

    def owner_of(self, client: OAuthClient) -> User | None:
        """The app's owner, deleted or not (an app outlives nobody's id)."""
        return self.session.get(User, client.owner_id, execution_options={INCLUDE_DELETED: True})

    def code(self, code_hash: str, client_pk: int) -> OAuthCode | None:
        return self.session.scalar(
            sa.select(OAuthCode).where(
                OAuthCode.code_hash == code_hash, OAuthCode.client_pk == client_pk
            )
        )

    def spend_code(self, code_id: int, now: datetime) -> bool:
        """Mark the code used, once: of two racing exchanges exactly one gets True."""
        result = self.session.execute(
            sa.update(OAuthCode)
            .where(OAuthCode.id == code_id, OAuthCode.used_at.is_(None))
            .values(used_at=now)
        )
        return bool(getattr(result, "rowcount", 0))

    def purge_codes(self, before: datetime) -> int:
        result = self.session.execute(sa.delete(OAuthCode).where(OAuthCode.expires_at < before))
        return int(getattr(result, "rowcount", 0) or 0)

    def grant(self, family: str) -> OAuthGrant | None:
        return self.session.scalar(sa.select(OAuthGrant).where(OAuthGrant.family == family))

    def live_grants(
        self, *, user_id: int | None = None, client_pk: int | None = None
    ) -> list[OAuthGrant]:
        query = sa.select(OAuthGrant).where(OAuthGrant.revoked_at.is_(None))
        if user_id is not None:
            query = query.where(OAuthGrant.user_id == user_id)
        if client_pk is not None:
            query = query.where(OAuthGrant.client_pk == client_pk)
        return list(self.session.scalars(query.order_by(OAuthGrant.created_at, OAuthGrant.id)))

    def clients_by_pk(self, pks: set[int]) -> dict[int, OAuthClient]:
        if not pks:
            return {}
        rows = self.session.scalars(sa.select(OAuthClient).where(OAuthClient.id.in_(pks)))
        return {row.id: row for row in rows}
