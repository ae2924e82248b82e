"""policy: a token charge on PostgreSQL as one function call

Revision ID: policy_0003
Revises: policy_0002
Create Date: 2026-12-01

``policy_charge_tokens`` does on the server what ``handlers/policy/budget.py`` does on SQLite in
one transaction: record the decision (a replay returns what was recorded), open the day's
totals, add the tokens to the tenant's and then the key's total each by one conditional UPDATE,
give the tenant's back when the key's limit refuses, and settle the decision row. A charge is on
the path of every chat turn that names max_tokens: seven round trips through the driver cost
about 1.9 ms of the policy process's CPU, one call a fraction of it. SQLite needs nothing here.
"""

from __future__ import annotations

from alembic import op

revision = "policy_0003"
down_revision = "policy_0002"
branch_labels = None
depends_on = None

CHARGE = """
CREATE OR REPLACE FUNCTION policy_charge_tokens(
    p_decision text, p_tenant text, p_key text, p_day date, p_tokens bigint,
    p_tenant_limit bigint, p_key_limit bigint, p_now timestamptz
) RETURNS TABLE (accepted boolean, exceeded text, tenant_used bigint, key_used bigint,
                 replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t_used bigint;
    k_used bigint;
    refused text;
BEGIN
    INSERT INTO policy_token_charges
        (decision_id, tenant, key_id, day, tokens, accepted, tenant_used, created_at)
    VALUES (p_decision, p_tenant, p_key, p_day, p_tokens, false, 0, p_now)
    ON CONFLICT (decision_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT c.accepted, c.exceeded::text, c.tenant_used, c.key_used, true
            FROM policy_token_charges c WHERE c.decision_id = p_decision;
        RETURN;
    END IF;
    INSERT INTO policy_token_usage (tenant, key_id, day, tokens)
    VALUES (p_tenant, '*', p_day, 0) ON CONFLICT DO NOTHING;
    IF p_key IS NOT NULL THEN
        INSERT INTO policy_token_usage (tenant, key_id, day, tokens)
        VALUES (p_tenant, p_key, p_day, 0) ON CONFLICT DO NOTHING;
    END IF;

    -- Each total grows only if it stays within its limit; the key's refusal gives the
    -- tenant's tokens back. Every outcome is settled on the decision row once, below.
    UPDATE policy_token_usage u SET tokens = u.tokens + p_tokens
    WHERE u.tenant = p_tenant AND u.key_id = '*' AND u.day = p_day
      AND (p_tenant_limit IS NULL OR u.tokens + p_tokens <= p_tenant_limit)
    RETURNING u.tokens INTO t_used;
    IF NOT FOUND THEN
        refused := 'tenant';
    ELSIF p_key IS NOT NULL THEN
        UPDATE policy_token_usage u SET tokens = u.tokens + p_tokens
        WHERE u.tenant = p_tenant AND u.key_id = p_key AND u.day = p_day
          AND (p_key_limit IS NULL OR u.tokens + p_tokens <= p_key_limit)
        RETURNING u.tokens INTO k_used;
        IF NOT FOUND THEN
            refused := 'key';
            UPDATE policy_token_usage u SET tokens = u.tokens - p_tokens
            WHERE u.tenant = p_tenant AND u.key_id = '*' AND u.day = p_day;
        END IF;
    END IF;
    IF refused IS NOT NULL THEN  -- the totals as they stand
        SELECT u.tokens INTO t_used FROM policy_token_usage u
        WHERE u.tenant = p_tenant AND u.key_id = '*' AND u.day = p_day;
        IF p_key IS NOT NULL THEN
            SELECT u.tokens INTO k_used FROM policy_token_usage u
            WHERE u.tenant = p_tenant AND u.key_id = p_key AND u.day = p_day;
        END IF;
    END IF;

    UPDATE policy_token_charges c
    SET accepted = refused IS NULL, exceeded = refused, tenant_used = t_used, key_used = k_used
    WHERE c.decision_id = p_decision;
    RETURN QUERY SELECT refused IS NULL, refused, t_used, k_used, false;
END;
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CHARGE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS policy_charge_tokens"
            "(text, text, text, date, bigint, bigint, bigint, timestamptz)"
        )
