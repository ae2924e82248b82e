"""tools: the record of tool calls, one row per (tenant, call id)

Revision ID: tools_0001
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "tools_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("tools",)
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tools_calls",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("call_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("claim", sa.String(32), nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "call_id", name="pk_tools_calls"),
    )


def downgrade() -> None:
    op.drop_table("tools_calls")
