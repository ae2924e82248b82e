"""sagas: why a saga failed, as a code callers branch on (not found, invalid, …), beside its text

Revision ID: sagas_0002
Revises: sagas_0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sagas_0002"
down_revision = "sagas_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("saga_instances", sa.Column("error_code", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saga_instances") as batch:
        batch.drop_column("error_code")
