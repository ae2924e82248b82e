"""identity: budgets and limits of API keys and tenants

A key may carry its own budget (USD per window of ``budget_duration``, counted from
``budget_start``), requests and tokens per minute, and free-form metadata; a tenant a budget.

Revision ID: identity_0003
Revises: identity_0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0003"
down_revision = "identity_0002"
branch_labels = None
depends_on = None


def _budget() -> list[sa.Column]:
    return [
        sa.Column("max_budget", sa.Double(), nullable=True),
        sa.Column("budget_duration", sa.String(16), nullable=True),
        sa.Column("budget_start", sa.Double(), nullable=True),
    ]


def upgrade() -> None:
    for column in _budget():
        op.add_column("identity_tenants", column)
    for column in _budget():
        op.add_column("identity_api_keys", column)
    op.add_column("identity_api_keys", sa.Column("rpm_limit", sa.Integer(), nullable=True))
    op.add_column("identity_api_keys", sa.Column("tpm_limit", sa.Integer(), nullable=True))
    op.add_column("identity_api_keys", sa.Column("key_metadata", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("identity_api_keys") as batch:
        for name in (
            "key_metadata",
            "tpm_limit",
            "rpm_limit",
            "budget_start",
            "budget_duration",
            "max_budget",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("identity_tenants") as batch:
        for name in ("budget_start", "budget_duration", "max_budget"):
            batch.drop_column(name)
