"""identity: the commands that created or changed a record, so a redelivery is recognised.

Tenants and users remember the command that created them, a spent refresh token the command
that rotated it and the hash of its successor, and a revocation the command that recorded it.

Revision ID: identity_0002
Revises: identity_0001
Create Date: 2025-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("identity_tenants", sa.Column("created_by", sa.String(64), nullable=True))
    op.add_column("identity_users", sa.Column("created_by", sa.String(64), nullable=True))
    op.add_column("identity_refresh_tokens", sa.Column("rotated_by", sa.String(64), nullable=True))
    op.add_column("identity_refresh_tokens", sa.Column("successor", sa.String(64), nullable=True))
    op.add_column("identity_revocations", sa.Column("command_id", sa.String(64), nullable=True))
    op.create_index("ix_identity_revocations_command_id", "identity_revocations", ["command_id"])


def downgrade() -> None:
    op.drop_index("ix_identity_revocations_command_id", "identity_revocations")
    with op.batch_alter_table("identity_revocations") as batch:
        batch.drop_column("command_id")
    with op.batch_alter_table("identity_refresh_tokens") as batch:
        batch.drop_column("successor")
        batch.drop_column("rotated_by")
    with op.batch_alter_table("identity_users") as batch:
        batch.drop_column("created_by")
    with op.batch_alter_table("identity_tenants") as batch:
        batch.drop_column("created_by")
