"""analytics: daily usage rollups, model calls awaiting their saga, counted event ids,
correlations and sagas seen

Revision ID: analytics_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "analytics_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("analytics",)
depends_on: str | None = None


def _sums() -> list[sa.Column]:
    return [
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("latency_ms_sum", sa.Float(), nullable=False),
        sa.Column("latency_count", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "analytics_usage_daily",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("saga_type", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(
            "tenant",
            "day",
            "kind",
            "model",
            "saga_type",
            "actor",
            "key_id",
            name="pk_analytics_usage_daily",
        ),
    )
    op.create_table(
        "analytics_unattributed",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=False),
        *_sums(),
        sa.PrimaryKeyConstraint(
            "tenant",
            "correlation_id",
            "day",
            "model",
            "actor",
            "key_id",
            name="pk_analytics_unattributed",
        ),
    )
    op.create_table(
        "analytics_processed",
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="pk_analytics_processed"),
    )
    op.create_index("ix_analytics_processed_seen_at", "analytics_processed", ["seen_at"])
    op.create_table(
        "analytics_correlations",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=False),
        sa.Column("saga_type", sa.String(128), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "correlation_id", name="pk_analytics_correlations"),
    )
    op.create_index("ix_analytics_correlations_seen_at", "analytics_correlations", ["seen_at"])
    op.create_table(
        "analytics_sagas",
        sa.Column("saga_id", sa.String(255), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("saga_type", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("saga_id", name="pk_analytics_sagas"),
    )
    op.create_index("ix_analytics_sagas_seen_at", "analytics_sagas", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_analytics_sagas_seen_at", table_name="analytics_sagas")
    op.drop_table("analytics_sagas")
    op.drop_index("ix_analytics_correlations_seen_at", table_name="analytics_correlations")
    op.drop_table("analytics_correlations")
    op.drop_index("ix_analytics_processed_seen_at", table_name="analytics_processed")
    op.drop_table("analytics_processed")
    op.drop_table("analytics_unattributed")
    op.drop_table("analytics_usage_daily")
