"""policy: the constitution in force per tenant, as last announced; the judge's verdicts

Revision ID: policy_0002
Revises: policy_0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "policy_0002"
down_revision = "policy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_constitutions",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("hash", sa.String(80), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("outline", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_policy_constitutions"),
    )
    op.create_table(
        "policy_judgements",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_policy_judgements"),
    )
    op.create_index("ix_policy_judgements_created_at", "policy_judgements", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_policy_judgements_created_at", table_name="policy_judgements")
    op.drop_table("policy_judgements")
    op.drop_table("policy_constitutions")
