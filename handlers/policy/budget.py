"""Running daily token totals per tenant and per API key, in SQL, idempotent by decision id.

One transaction per charge. The decision id is recorded first: a redelivered command finds its
row and gets the very same answer, charging nothing twice. The tokens are then added to the
tenant's and the key's totals for the (UTC) day, each by one conditional UPDATE
(``tokens + n <= limit``), so any number of concurrent handler replicas can never overshoot a
limit between reading a total and writing it.

On SQLite that transaction runs in this module. On PostgreSQL the same steps are one
call of ``policy_charge_tokens`` (migration ``policy_0003``), one round trip where the driver
made seven; ``tests/policy/test_budget.py`` holds both to the same behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Index,
    String,
    Table,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.policy.evaluate import Finding
from kernel.db import driver, in_transaction, metadata

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


# Built once, their values bound at execution: a charge is on the path of every chat turn that
# names max_tokens, and statements built per call cost more in SQLAlchemy's construction and
# cache keys than SQLite's work. Parameters are named apart from the columns they set.
_CHARGED = token_charges.c
_TOTAL = token_usage.c
_RECORD = {
    name: dialect.insert(token_charges).on_conflict_do_nothing(index_elements=["decision_id"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_OPEN_DAY = {
    name: dialect.insert(token_usage).on_conflict_do_nothing(
        index_elements=["tenant", "key_id", "day"]
    )
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_THE_TOTAL = (
    _TOTAL.tenant == bindparam("p_tenant"),
    _TOTAL.key_id == bindparam("p_key"),
    _TOTAL.day == bindparam("p_day"),
)
_ADDED = _TOTAL.tokens + bindparam("p_tokens", type_=BigInteger)
_ADD = update(token_usage).where(*_THE_TOTAL).values(tokens=_ADDED).returning(_TOTAL.tokens)
_ADD_WITHIN = _ADD.where(_ADDED <= bindparam("p_limit"))
_USED = select(_TOTAL.tokens).where(*_THE_TOTAL)
_SETTLE = (
    update(token_charges)
    .where(_CHARGED.decision_id == bindparam("p_decision"))
    .values(
        accepted=bindparam("p_accepted"),
        exceeded=bindparam("p_exceeded"),
        tenant_used=bindparam("p_tenant_used"),
        key_used=bindparam("p_key_used"),
    )
)
_REPLAY = select(token_charges).where(_CHARGED.decision_id == bindparam("p_decision"))
# Through asyncpg's own pool (``kernel.db.driver``): the call a prompt check's reply waits for.
_CHARGE_CALL = "SELECT * FROM policy_charge_tokens($1, $2, $3, $4, $5, $6, $7, $8)"


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
    pool = await driver(engine)
    if pool is not None:  # PostgreSQL: one call, one round trip
        row = await pool.fetchrow(
            _CHARGE_CALL,
            decision_id,
            tenant,
            key_id,
            day,
            tokens,
            tenant_limit,
            key_limit,
            datetime.now(UTC),
        )
        assert row is not None  # the function returns one row, whatever it decides
        return Charge(
            row["accepted"], row["exceeded"], row["tenant_used"], row["key_used"], row["replayed"]
        )

    dialect = engine.dialect.name

    def work(conn: Connection) -> Charge:
        recorded = conn.execute(
            _RECORD[dialect],
            {
                "decision_id": decision_id,
                "tenant": tenant,
                "key_id": key_id,
                "day": day,
                "tokens": tokens,
                "accepted": False,
                "tenant_used": 0,
                "created_at": datetime.now(UTC),
            },
        )
        if recorded.rowcount == 0:
            row = conn.execute(_REPLAY, {"p_decision": decision_id}).one()
            return Charge(row.accepted, row.exceeded, row.tenant_used, row.key_used, replayed=True)
        subjects = [TENANT_WIDE] if key_id is None else [TENANT_WIDE, key_id]
        conn.execute(
            _OPEN_DAY[dialect],
            [{"tenant": tenant, "key_id": s, "day": day, "tokens": 0} for s in subjects],
        )
        result = _apply(conn, tenant, key_id, day, tokens, tenant_limit, key_limit)
        conn.execute(
            _SETTLE,
            {
                "p_decision": decision_id,
                "p_accepted": result.accepted,
                "p_exceeded": result.exceeded,
                "p_tenant_used": result.tenant_used,
                "p_key_used": result.key_used,
            },
        )
        return result

    # One transaction of a few indexed statements, which the prompt check's reply waits for:
    # on SQLite it runs on the event loop unless another writer holds the file.
    return await in_transaction(engine, work, on_loop=True)


def _apply(
    conn: Connection,
    tenant: str,
    key_id: str | None,
    day: date,
    tokens: int,
    tenant_limit: int | None,
    key_limit: int | None,
) -> Charge:
    tenant_used = _add(conn, tenant, TENANT_WIDE, day, tokens, tenant_limit)
    if tenant_used is None:
        return Charge(
            False,
            "tenant",
            _used(conn, tenant, TENANT_WIDE, day),
            _used(conn, tenant, key_id, day) if key_id else None,
        )
    if key_id is None:
        return Charge(True, None, tenant_used, None)
    key_used = _add(conn, tenant, key_id, day, tokens, key_limit)
    if key_used is None:
        tenant_used = _add(conn, tenant, TENANT_WIDE, day, -tokens, None)
        assert tenant_used is not None
        return Charge(False, "key", tenant_used, _used(conn, tenant, key_id, day))
    return Charge(True, None, tenant_used, key_used)


def _add(
    conn: Connection, tenant: str, key_id: str, day: date, tokens: int, limit: int | None
) -> int | None:
    """The new total, or None when adding would pass ``limit`` (nothing is then changed)."""
    params = {"p_tenant": tenant, "p_key": key_id, "p_day": day, "p_tokens": tokens}
    if limit is None:
        total = conn.execute(_ADD, params).scalar_one_or_none()
    else:
        total = conn.execute(_ADD_WITHIN, {**params, "p_limit": limit}).scalar_one_or_none()
    return None if total is None else int(total)


def _used(conn: Connection, tenant: str, key_id: str, day: date) -> int:
    total = conn.execute(_USED, {"p_tenant": tenant, "p_key": key_id, "p_day": day}).scalar()
    return int(total or 0)


async def used(engine: AsyncEngine, tenant: str, day: date, key_id: str | None = None) -> int:
    """Tokens charged on ``day`` to the tenant (or to one of its keys)."""
    params = {"p_tenant": tenant, "p_key": key_id or TENANT_WIDE, "p_day": day}
    async with engine.connect() as conn:
        total = await conn.scalar(_USED, params)
    return int(total or 0)


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
