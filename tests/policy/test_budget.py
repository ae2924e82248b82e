"""The running daily token totals, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy import budget, constitutions, judgements

DAY = date(2025, 3, 14)


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def charge(
    engine: AsyncEngine,
    tenant: str,
    tokens: int,
    *,
    key_id: str | None = None,
    tenant_limit: int | None = None,
    key_limit: int | None = None,
    decision_id: str | None = None,
    day: date = DAY,
) -> budget.Charge:
    return await budget.charge(
        engine,
        decision_id=decision_id or fresh("d"),
        tenant=tenant,
        key_id=key_id,
        day=day,
        tokens=tokens,
        tenant_limit=tenant_limit,
        key_limit=key_limit,
    )


async def test_charges_within_the_limit_add_up(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    first = await charge(engine, tenant, 40, tenant_limit=100)
    second = await charge(engine, tenant, 60, tenant_limit=100)
    assert (first.accepted, first.tenant_used) == (True, 40)
    assert (second.accepted, second.tenant_used) == (True, 100)
    assert await budget.used(engine, tenant, DAY) == 100


async def test_a_charge_past_the_tenant_limit_is_refused_and_changes_nothing(
    engine: AsyncEngine,
) -> None:
    tenant = fresh("t")
    await charge(engine, tenant, 90, tenant_limit=100)
    refused = await charge(engine, tenant, 11, tenant_limit=100)
    assert not refused.accepted
    assert refused.exceeded == "tenant"
    assert refused.tenant_used == 90
    assert await budget.used(engine, tenant, DAY) == 90
    (finding,) = budget.findings(refused, 11, 100, None)
    assert finding.rule_id == "budget.tenant_daily" and finding.action == "deny"
    assert "90 of 100 used, 11 requested" in finding.reason


async def test_the_same_decision_is_charged_once(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    first = await charge(engine, tenant, 30, key_id="k1", decision_id="same-" + tenant)
    again = await charge(engine, tenant, 30, key_id="k1", decision_id="same-" + tenant)
    assert first.accepted and again.accepted
    assert again.replayed and not first.replayed
    assert (again.tenant_used, again.key_used) == (first.tenant_used, first.key_used) == (30, 30)
    assert await budget.used(engine, tenant, DAY) == 30
    assert await budget.used(engine, tenant, DAY, "k1") == 30


async def test_a_refused_decision_stays_refused_when_replayed(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    await charge(engine, tenant, 80, tenant_limit=100)
    decision_id = fresh("d")
    refused = await charge(engine, tenant, 50, tenant_limit=100, decision_id=decision_id)
    # The budget was raised meanwhile; the redelivered command still gets its first answer.
    replayed = await charge(engine, tenant, 50, tenant_limit=1000, decision_id=decision_id)
    assert not refused.accepted and not replayed.accepted
    assert (replayed.exceeded, replayed.tenant_used) == ("tenant", 80)
    assert await budget.used(engine, tenant, DAY) == 80


async def test_a_charge_past_the_key_limit_leaves_the_tenant_total_unchanged(
    engine: AsyncEngine,
) -> None:
    tenant = fresh("t")
    await charge(engine, tenant, 50, key_id="k1", key_limit=60)
    refused = await charge(engine, tenant, 20, key_id="k1", key_limit=60, tenant_limit=1000)
    assert (refused.accepted, refused.exceeded, refused.key_used) == (False, "key", 50)
    assert await budget.used(engine, tenant, DAY) == 50
    assert await budget.used(engine, tenant, DAY, "k1") == 50
    (finding,) = budget.findings(refused, 20, 1000, 60)
    assert finding.rule_id == "budget.key_daily"


async def test_keys_of_one_tenant_have_separate_totals_and_share_the_tenant_total(
    engine: AsyncEngine,
) -> None:
    tenant = fresh("t")
    await charge(engine, tenant, 50, key_id="k1", key_limit=60)
    other = await charge(engine, tenant, 50, key_id="k2", key_limit=60)
    assert other.accepted and other.key_used == 50
    assert await budget.used(engine, tenant, DAY) == 100


async def test_each_day_starts_from_zero(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    await charge(engine, tenant, 100, tenant_limit=100)
    next_day = await charge(engine, tenant, 100, tenant_limit=100, day=date(2025, 3, 15))
    assert next_day.accepted and next_day.tenant_used == 100


async def test_tenants_do_not_share_totals(engine: AsyncEngine) -> None:
    acme, globex = fresh("acme"), fresh("globex")
    await charge(engine, acme, 100, tenant_limit=100)
    assert (await charge(engine, globex, 100, tenant_limit=100)).accepted


async def test_concurrent_charges_never_pass_the_limit(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    results = await asyncio.gather(
        *(charge(engine, tenant, 30, key_id="k", tenant_limit=100) for _ in range(8))
    )
    assert sum(result.accepted for result in results) == 3
    assert await budget.used(engine, tenant, DAY) == 90


async def test_pruning_forgets_old_charges_but_keeps_the_totals(engine: AsyncEngine) -> None:
    tenant = fresh("t")
    old = fresh("d")
    await charge(engine, tenant, 10, decision_id=old, day=date(2001, 1, 1))
    assert await budget.prune(engine, date(2001, 1, 2)) >= 1
    assert await budget.used(engine, tenant, date(2001, 1, 1)) == 10
    again = await charge(engine, tenant, 10, decision_id=old, day=date(2001, 1, 1))
    assert not again.replayed and again.tenant_used == 20


async def test_the_migration_creates_the_tables_as_declared(engine: AsyncEngine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import MetaData

    declared = MetaData()
    for table in (
        budget.token_usage,
        budget.token_charges,
        constitutions.constitutions,
        judgements.judgements,
    ):
        table.to_metadata(declared)

    def differences(connection) -> list[object]:  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(connection), declared)

    async with engine.connect() as conn:
        found = await conn.run_sync(differences)
    assert [d for d in found if "policy_" in str(d)] == []
