"""policy: daily token totals and the charges that made them

Revision ID: policy_0001
Revises:
Create Date: 2025-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "policy_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("policy",)
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "policy_token_usage",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key_id", "day", name="pk_policy_token_usage"),
    )
    op.create_table(
        "policy_token_charges",
        sa.Column("decision_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("exceeded", sa.String(16), nullable=True),
        sa.Column("tenant_used", sa.BigInteger(), nullable=False),
        sa.Column("key_used", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("decision_id", name="pk_policy_token_charges"),
    )
    op.create_index("ix_policy_token_charges_day", "policy_token_charges", ["day"])


def downgrade() -> None:
    op.drop_index("ix_policy_token_charges_day", table_name="policy_token_charges")
    op.drop_table("policy_token_charges")
    op.drop_table("policy_token_usage")
