"""Read-only views of sagas: list with filters and paging, one instance with its history.

Queries never take locks or write, so operators can inspect a busy system freely.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kernel.db import reader
from sagas import tables


async def list_instances(
    db: AsyncEngine,
    *,
    tenant: str | None = None,
    saga_type: str | None = None,
    state: str | None = None,
    since: float | None = None,
    until: float | None = None,
    where: ColumnElement[bool] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Instances newest first. ``where`` is a further condition, such as a list filter
    (``sagas/list_query.py: parse``) makes."""
    t = tables.instances
    conditions: list[ColumnElement[bool]] = [] if where is None else [where]
    if tenant:
        conditions.append(t.c.tenant == tenant)
    if saga_type:
        conditions.append(t.c.type == saga_type)
    if state:
        conditions.append(t.c.state == state)
    if since is not None:
        conditions.append(t.c.created_at >= since)
    if until is not None:
        conditions.append(t.c.created_at < until)
    stmt = (
        select(
            t.c.id,
            t.c.type,
            t.c.version,
            t.c.tenant,
            t.c.state,
            t.c.step,
            t.c.created_at,
            t.c.updated_at,
            t.c.finished_at,
            t.c.parent_id,
            t.c.error,
        )
        .where(and_(*conditions))
        .order_by(t.c.created_at.desc(), t.c.id)
        .limit(limit)
        .offset(offset)
    )
    async with reader(db).connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]


async def get_instance(
    db: AsyncEngine, saga_id: str, tenant: str | None = None
) -> dict[str, Any] | None:
    t = tables.instances
    stmt = select(t).where(t.c.id == saga_id)
    if tenant:
        stmt = stmt.where(t.c.tenant == tenant)
    async with reader(db).connect() as conn:
        row = (await conn.execute(stmt)).mappings().first()
    return dict(row) if row else None


async def list_children(db: AsyncEngine, saga_id: str, tenant: str | None = None) -> list[str]:
    """The ids of the sagas ``saga_id`` started, oldest first."""
    t = tables.instances
    stmt = select(t.c.id).where(t.c.parent_id == saga_id)
    if tenant:
        stmt = stmt.where(t.c.tenant == tenant)
    stmt = stmt.order_by(t.c.created_at, t.c.id)
    async with reader(db).connect() as conn:
        return [str(r[0]) for r in await conn.execute(stmt)]


async def ids_starting_with(db: AsyncEngine, prefix: str, limit: int = 5) -> list[str]:
    """Saga ids that start with ``prefix`` (an operator types the first few characters)."""
    t = tables.instances
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = select(t.c.id).where(t.c.id.like(f"{escaped}%", escape="\\")).limit(limit)
    async with reader(db).connect() as conn:
        return [str(r) for r in (await conn.execute(stmt)).scalars()]


async def get_history(db: AsyncEngine, saga_id: str) -> list[dict[str, Any]]:
    h = tables.history
    stmt = select(h).where(h.c.saga_id == saga_id).order_by(h.c.run, h.c.seq, h.c.id)
    async with reader(db).connect() as conn:
        return [dict(r) for r in (await conn.execute(stmt)).mappings()]
