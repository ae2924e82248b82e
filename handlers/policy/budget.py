"""Running daily token totals per tenant and per API key, in SQL, idempotent by decision id.

One transaction per charge. The decision id is recorded first: a redelivered command finds its
row and gets the very same answer, charging nothing twice. The tokens are then added to the
tenant's and the key's totals for the (UTC) day, each by one conditional UPDATE
(``tokens + n <= limit``), so any number of concurrent handler replicas can never overshoot a
limit between reading a total and writing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from handlers.policy.evaluate import Finding
from kernel.db import metadata

# The key_id under which a tenant's own total is kept (API key ids never look like this).
TENANT_WIDE = "*"

token_usage = Table(
    "policy_token_usage",
    metadata,
    Column("tenant", String(128), primary_key=True),
    Column("key_id", String(255), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("tokens", BigInteger, nullable=False),
)

token_charges = Table(
    "policy_token_charges",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("key_id", String(255), nullable=True),
    Column("day", Date, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("accepted", Boolean, nullable=False),
    Column("exceeded", String(16), nullable=True),
    Column("tenant_used", BigInteger, nullable=False),
    Column("key_used", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_policy_token_charges_day", "day"),
)

Scope = Literal["tenant", "key"]


@dataclass(frozen=True)
class Charge:
    """What a charge did; ``*_used`` are the day's totals after it (or when it was refused)."""

    accepted: bool
    exceeded: Scope | None
    tenant_used: int
    key_used: int | None
    replayed: bool = False


def _insert(conn: AsyncConnection, table: Table):  # type: ignore[no-untyped-def]
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def charge(
    engine: AsyncEngine,
    *,
    decision_id: str,
    tenant: str,
    key_id: str | None,
    day: date,
    tokens: int,
    tenant_limit: int | None,
    key_limit: int | None,
) -> Charge:
    """Add ``tokens`` to the day's totals unless that would pass a limit (None: unlimited)."""
    if tokens < 0:
        raise ValueError("tokens cannot be negative")
    if key_id == TENANT_WIDE:
        raise ValueError(f"{TENANT_WIDE!r} is not a valid key id")
    key_id = key_id or None
    async with engine.begin() as conn:
        recorded = await conn.execute(
            _insert(conn, token_charges)
            .values(
                decision_id=decision_id,
                tenant=tenant,
                key_id=key_id,
                day=day,
                tokens=tokens,
                accepted=False,
                tenant_used=0,
                created_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["decision_id"])
        )
        if recorded.rowcount == 0:
            return await _replay(conn, decision_id)
        subjects = [TENANT_WIDE] if key_id is None else [TENANT_WIDE, key_id]
        await conn.execute(
            _insert(conn, token_usage)
            .values([dict(tenant=tenant, key_id=s, day=day, tokens=0) for s in subjects])
            .on_conflict_do_nothing(index_elements=["tenant", "key_id", "day"])
        )
        result = await _apply(conn, tenant, key_id, day, tokens, tenant_limit, key_limit)
        await conn.execute(
            update(token_charges)
            .where(token_charges.c.decision_id == decision_id)
            .values(
                accepted=result.accepted,
                exceeded=result.exceeded,
                tenant_used=result.tenant_used,
                key_used=result.key_used,
            )
        )
        return result


async def _apply(
    conn: AsyncConnection,
    tenant: str,
    key_id: str | None,
    day: date,
    tokens: int,
    tenant_limit: int | None,
    key_limit: int | None,
) -> Charge:
    tenant_used = await _add(conn, tenant, TENANT_WIDE, day, tokens, tenant_limit)
    if tenant_used is None:
        return Charge(
            False,
            "tenant",
            await _used(conn, tenant, TENANT_WIDE, day),
            await _used(conn, tenant, key_id, day) if key_id else None,
        )
    if key_id is None:
        return Charge(True, None, tenant_used, None)
    key_used = await _add(conn, tenant, key_id, day, tokens, key_limit)
    if key_used is None:
        tenant_used = await _add(conn, tenant, TENANT_WIDE, day, -tokens, None)
        assert tenant_used is not None
        return Charge(False, "key", tenant_used, await _used(conn, tenant, key_id, day))
    return Charge(True, None, tenant_used, key_used)


async def _add(
    conn: AsyncConnection, tenant: str, key_id: str, day: date, tokens: int, limit: int | None
) -> int | None:
    """The new total, or None when adding would pass ``limit`` (nothing is then changed)."""
    row = token_usage.c
    where = [row.tenant == tenant, row.key_id == key_id, row.day == day]
    if limit is not None:
        where.append(row.tokens + tokens <= limit)
    result = await conn.execute(
        update(token_usage).where(*where).values(tokens=row.tokens + tokens).returning(row.tokens)
    )
    total = result.scalar_one_or_none()
    return None if total is None else int(total)


async def _used(conn: AsyncConnection, tenant: str, key_id: str, day: date) -> int:
    row = token_usage.c
    total = await conn.scalar(
        select(row.tokens).where(row.tenant == tenant, row.key_id == key_id, row.day == day)
    )
    return int(total or 0)


async def _replay(conn: AsyncConnection, decision_id: str) -> Charge:
    row = (
        await conn.execute(select(token_charges).where(token_charges.c.decision_id == decision_id))
    ).one()
    return Charge(row.accepted, row.exceeded, row.tenant_used, row.key_used, replayed=True)


async def used(engine: AsyncEngine, tenant: str, day: date, key_id: str | None = None) -> int:
    """Tokens charged on ``day`` to the tenant (or to one of its keys)."""
    async with engine.connect() as conn:
        return await _used(conn, tenant, key_id or TENANT_WIDE, day)


async def prune(engine: AsyncEngine, before: date) -> int:
    """Forget charge records of days before ``before`` — kept only as long as a command can
    still be redelivered. The daily totals stay."""
    async with engine.begin() as conn:
        result = await conn.execute(delete(token_charges).where(token_charges.c.day < before))
        return int(result.rowcount)


def findings(
    charged: Charge, tokens: int, tenant_limit: int | None, key_limit: int | None
) -> tuple[Finding, ...]:
    """A refused charge as the finding that denies the request."""
    if charged.accepted:
        return ()
    if charged.exceeded == "key":
        return (
            Finding(
                "budget.key_daily",
                "deny",
                f"the API key's daily token budget is spent: {charged.key_used} of {key_limit} "
                f"used, {tokens} requested",
            ),
        )
    return (
        Finding(
            "budget.tenant_daily",
            "deny",
            f"the tenant's daily token budget is spent: {charged.tenant_used} of {tenant_limit} "
            f"used, {tokens} requested",
        ),
    )
