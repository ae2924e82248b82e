"""Saga store: instances, inbox, outbox, history.

Revision ID: sagas_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "sagas_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("sagas",)
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "saga_instances",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("parent_id", sa.String(128), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("input", sa.JSON, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("waiting", sa.JSON, nullable=True),
        sa.Column("wake_at", sa.Float, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("rev", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_saga_instances_wake_at", "saga_instances", ["wake_at"])
    op.create_index(
        "ix_saga_instances_listing", "saga_instances", ["tenant", "type", "state", "created_at"]
    )
    op.create_table(
        "saga_inbox",
        sa.Column("saga_id", sa.String(128), primary_key=True),
        sa.Column("message_id", sa.String(200), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_table(
        "saga_outbox",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("saga_id", sa.String(128), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("published_at", sa.Float, nullable=True),
    )
    op.create_index("ix_saga_outbox_unpublished", "saga_outbox", ["published_at", "created_at"])
    op.create_index("ix_saga_outbox_saga", "saga_outbox", ["saga_id"])
    op.create_table(
        "saga_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("saga_id", sa.String(128), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON, nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.UniqueConstraint("saga_id", "run", "seq", "event", name="uq_saga_history_step"),
    )
    op.create_index("ix_saga_history_saga", "saga_history", ["saga_id", "run", "seq"])


def downgrade() -> None:
    op.drop_table("saga_history")
    op.drop_table("saga_outbox")
    op.drop_table("saga_inbox")
    op.drop_table("saga_instances")
