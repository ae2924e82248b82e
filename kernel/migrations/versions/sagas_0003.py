"""sagas: the deadlines of turns gateways run without a saga, so a turn whose gateway died ends

Revision ID: sagas_0003
Revises: sagas_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "sagas_0003"
down_revision = "sagas_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saga_turn_watch",
        sa.Column("correlation_id", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
    )
    op.create_index("ix_saga_turn_watch_deadline", "saga_turn_watch", ["deadline"])
    op.create_index("ix_saga_turn_watch_ended_at", "saga_turn_watch", ["ended_at"])


def downgrade() -> None:
    op.drop_table("saga_turn_watch")
