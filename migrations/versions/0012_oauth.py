"""OAuth 2.0: registered apps (`oauth_clients`), authorization codes (`oauth_codes`) and
grants (`oauth_grants`). Three new tables: no lock on a populated one.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "oauth_clients",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("client_secret_hash", sa.String(64), nullable=True),
        sa.Column("owner_id", BIGINT, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("redirect_uris", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("confidential", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_clients"),
        sa.UniqueConstraint("client_id", name="uq_oauth_clients_client_id"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_oauth_clients_owner_id_users", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_oauth_clients_owner_id", "oauth_clients", ["owner_id"])

    op.create_table(
        "oauth_codes",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("client_pk", BIGINT, nullable=False),
        sa.Column("user_id", BIGINT, nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(10), nullable=False),
        sa.Column("expires_at", UTC_TS, nullable=False),
        sa.Column("used_at", UTC_TS, nullable=True),
        sa.Column("family", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_codes"),
        sa.UniqueConstraint("code_hash", name="uq_oauth_codes_code_hash"),
        sa.ForeignKeyConstraint(
            ["client_pk"],
            ["oauth_clients.id"],
            name="fk_oauth_codes_client_pk_oauth_clients",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_oauth_codes_user_id_users", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_oauth_codes_client_pk", "oauth_codes", ["client_pk"])

    op.create_table(
        "oauth_grants",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("family", sa.String(32), nullable=False),
        sa.Column("client_pk", BIGINT, nullable=False),
        sa.Column("user_id", BIGINT, nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.Column("revoked_at", UTC_TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_grants"),
        sa.UniqueConstraint("family", name="uq_oauth_grants_family"),
        sa.ForeignKeyConstraint(
            ["client_pk"],
            ["oauth_clients.id"],
            name="fk_oauth_grants_client_pk_oauth_clients",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_oauth_grants_user_id_users", ondelete="RESTRICT"
        ),
    )
    op.create_index("ix_oauth_grants_client_pk", "oauth_grants", ["client_pk"])
    op.create_index("ix_oauth_grants_user_id", "oauth_grants", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_oauth_grants_user_id", table_name="oauth_grants")
    op.drop_index("ix_oauth_grants_client_pk", table_name="oauth_grants")
    op.drop_table("oauth_grants")
    op.drop_index("ix_oauth_codes_client_pk", table_name="oauth_codes")
    op.drop_table("oauth_codes")
    op.drop_index("ix_oauth_clients_owner_id", table_name="oauth_clients")
    op.drop_table("oauth_clients")
