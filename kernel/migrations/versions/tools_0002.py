"""tools: who made each call, so a call id never answers another caller with someone else's result

Revision ID: tools_0002
Revises: tools_0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "tools_0002"
down_revision = "tools_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tools_calls", sa.Column("caller", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tools_calls") as batch:
        batch.drop_column("caller")
