"""memory: conversation history table

Revision ID: memory_0001
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "memory_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("memory",)
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "memory_turns",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("session", sa.String(255), nullable=True),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column("turn_id", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_memory_turns"),
        sa.UniqueConstraint("tenant", "turn_id", name="uq_memory_turns_tenant_turn_id"),
    )
    op.create_index(
        "ix_memory_turns_tenant_session_seq", "memory_turns", ["tenant", "session", "seq"]
    )


def downgrade() -> None:
    op.drop_index("ix_memory_turns_tenant_session_seq", table_name="memory_turns")
    op.drop_table("memory_turns")
