"""identity: tenants, users, API keys, signing keys, refresh families and tokens, revocations.

Revision ID: identity_0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0001"
down_revision = None
branch_labels = ("identity",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_tenants",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_tenants"),
    )
    op.create_table(
        "identity_users",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_users"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["identity_tenants.id"],
            name="fk_identity_users_tenant_id_identity_tenants",
        ),
        sa.UniqueConstraint("tenant_id", "name", name="uq_identity_users_tenant_id_name"),
    )
    op.create_table(
        "identity_api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_identity_api_keys"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["identity_tenants.id"],
            name="fk_identity_api_keys_tenant_id_identity_tenants",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["identity_users.id"],
            name="fk_identity_api_keys_user_id_identity_users",
        ),
    )
    op.create_index("ix_identity_api_keys_user_id", "identity_api_keys", ["user_id"])
    op.create_table(
        "identity_signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("private_pem", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("activated_at", sa.Double(), nullable=True),
        sa.Column("verify_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_identity_signing_keys"),
    )
    one_per_status = sa.text("status IN ('active', 'next')")
    op.create_index(
        "ix_identity_signing_keys_one_per_status",
        "identity_signing_keys",
        ["status"],
        unique=True,
        sqlite_where=one_per_status,
        postgresql_where=one_per_status,
    )
    op.create_table(
        "identity_token_families",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(63), nullable=False),
        sa.Column("user_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=True),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("last_used_at", sa.Double(), nullable=True),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_identity_token_families"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["identity_tenants.id"],
            name="fk_identity_token_families_tenant_id_identity_tenants",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["identity_users.id"],
            name="fk_identity_token_families_user_id_identity_users",
        ),
    )
    op.create_index("ix_identity_token_families_user_id", "identity_token_families", ["user_id"])
    op.create_table(
        "identity_refresh_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("family_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("used_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name="pk_identity_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["family_id"],
            ["identity_token_families.id"],
            name="fk_identity_refresh_tokens_family_id_identity_token_families",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_identity_refresh_tokens_family_id", "identity_refresh_tokens", ["family_id"]
    )
    op.create_table(
        "identity_revocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_identity_revocations"),
    )
    op.create_index("ix_identity_revocations_revoked_at", "identity_revocations", ["revoked_at"])
    op.create_index("ix_identity_revocations_expires_at", "identity_revocations", ["expires_at"])


def downgrade() -> None:
    op.drop_table("identity_revocations")
    op.drop_table("identity_refresh_tokens")
    op.drop_table("identity_token_families")
    op.drop_table("identity_signing_keys")
    op.drop_table("identity_api_keys")
    op.drop_table("identity_users")
    op.drop_table("identity_tenants")
