"""Each tool call runs once per (tenant, call id): claimed in SQL first, its result stored after.

Delivery is at-least-once, and tools have effects (an issue opened, a message posted), so a
redelivered call must return the first result without running the tool again. The row is
inserted *before* the tool runs; the primary key lets exactly one delivery claim it; the others
wait for its result. A claim carries a lease (the tool's time limit plus a grace period), so a
call whose process died mid-run can be taken over by a later delivery — at that point the tool
may run a second time, which is the one case at-least-once delivery cannot rule out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from sqlalchemy import JSON, Column, Double, PrimaryKeyConstraint, String, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.tools.invocation import invoke
from handlers.tools.registry import Registry
from kernel.db import metadata
from schemas.envelope import new_id
from schemas.tools import ToolInvoke, ToolResult

LEASE_GRACE = 10.0
DEFAULT_LEASE = 30.0 + LEASE_GRACE

calls = Table(
    "tools_calls",
    metadata,
    Column("tenant", String(128), nullable=False),
    Column("call_id", String(255), nullable=False),
    Column("name", String(255), nullable=False),
    # The user the call was made for: a call id answers only the same user and tool.
    Column("caller", String(255), nullable=True),
    # "running" while a delivery holds the claim, "done" once the result is stored.
    Column("status", String(8), nullable=False),
    Column("claim", String(32), nullable=False),
    Column("lease_until", Double, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("finished_at", Double, nullable=True),
    # The ToolResult as JSON, once done.
    Column("result", JSON, nullable=True),
    PrimaryKeyConstraint("tenant", "call_id", name="pk_tools_calls"),
)


class CallInProgress(RuntimeError):
    """Another delivery of this call is still running it; retrying later will find its result."""


class CallIdTaken(ValueError):
    """The call id was already used for another user or another tool; its result is not theirs."""


@dataclass(frozen=True)
class Claimed:
    claim: str


@dataclass(frozen=True)
class Finished:
    result: ToolResult


@dataclass(frozen=True)
class Running:
    lease_until: float


async def claim(
    engine: AsyncEngine,
    tenant: str,
    call_id: str,
    name: str,
    lease: float,
    caller: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Claimed | Finished | Running:
    now = clock()
    token = new_id()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                calls.insert().values(
                    tenant=tenant,
                    call_id=call_id,
                    name=name,
                    caller=caller,
                    status="running",
                    claim=token,
                    lease_until=now + lease,
                    created_at=now,
                )
            )
        return Claimed(token)
    except IntegrityError:
        pass  # an earlier or concurrent delivery holds the row
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(
                    calls.c.name,
                    calls.c.caller,
                    calls.c.status,
                    calls.c.claim,
                    calls.c.lease_until,
                    calls.c.result,
                ).where(calls.c.tenant == tenant, calls.c.call_id == call_id)
            )
        ).one()
        if row.name != name or row.caller != caller:
            raise CallIdTaken(f"call id {call_id!r} was used for another call; send a new one")
        if row.status == "done":
            return Finished(msgspec.convert(row.result, ToolResult))
        if row.lease_until > now:
            return Running(row.lease_until)
        # The holder's lease ran out (its process most likely died): take over, if no one else did.
        taken = await conn.execute(
            update(calls)
            .where(
                calls.c.tenant == tenant,
                calls.c.call_id == call_id,
                calls.c.status == "running",
                calls.c.claim == row.claim,
            )
            .values(claim=token, lease_until=now + lease)
        )
        return Claimed(token) if taken.rowcount == 1 else Running(now + lease)


async def finish(
    engine: AsyncEngine,
    tenant: str,
    result: ToolResult,
    clock: Callable[[], float] = time.time,
) -> ToolResult:
    """Store the result unless one is stored already; returns the one stored, which callers send."""
    async with engine.begin() as conn:
        stored = await conn.execute(
            update(calls)
            .where(
                calls.c.tenant == tenant,
                calls.c.call_id == result.call_id,
                calls.c.status == "running",
            )
            .values(status="done", result=msgspec.to_builtins(result), finished_at=clock())
        )
        if stored.rowcount == 1:
            return result
        earlier = (
            await conn.execute(
                select(calls.c.result).where(
                    calls.c.tenant == tenant, calls.c.call_id == result.call_id
                )
            )
        ).scalar_one()
    return msgspec.convert(earlier, ToolResult)


async def invoke_once(
    engine: AsyncEngine,
    registry: Registry,
    tenant: str,
    command: ToolInvoke,
    wait: float = 30.0,
    poll: float = 0.05,
    clock: Callable[[], float] = time.time,
) -> ToolResult:
    """Run the call if no delivery has, else return (or wait up to ``wait`` s for) its result.

    ``clock`` dates the claim and its lease; ``wait`` is real time, however the clock moves."""
    tool = registry.tools.get(command.name)
    lease = tool.timeout + LEASE_GRACE if tool else DEFAULT_LEASE
    deadline = time.monotonic() + wait
    while True:
        state = await claim(
            engine, tenant, command.call_id, command.name, lease, command.user, clock
        )
        if isinstance(state, Finished):
            return state.result
        if isinstance(state, Claimed):
            result = await invoke(registry, command.call_id, command.name, command.arguments)
            return await finish(engine, tenant, result, clock)
        if time.monotonic() >= deadline:
            raise CallInProgress(
                f"call {command.call_id!r} is being run by another delivery "
                f"(claimed until unix time {state.lease_until:.0f})"
            )
        await asyncio.sleep(poll)
