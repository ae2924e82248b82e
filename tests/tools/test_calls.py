"""A tool call runs once per (tenant, call id), however often the command is delivered."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.tools.calls import CallIdTaken, CallInProgress, calls, claim, invoke_once
from handlers.tools.registry import Annotations, Registry, Tool
from schemas.tools import ToolInvoke
from tests.clock import Clock


class Counter:
    """A tool with an effect the test can count: each run appends to ``runs``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.runs: list[dict[str, Any]] = []
        self.delay = delay

    async def __call__(self, arguments: dict[str, Any]) -> dict[str, Any]:
        self.runs.append(arguments)
        await asyncio.sleep(self.delay)
        return {"run": len(self.runs), "at": time.time()}


def registry_with(counter: Counter) -> Registry:
    registry = Registry()
    registry.add(
        Tool(
            name="count",
            description="Counts its runs",
            input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
            run=counter,
            annotations=Annotations(idempotent=False),
            timeout=5.0,
        )
    )
    return registry


def command(call_id: str | None = None, **arguments: Any) -> ToolInvoke:
    return ToolInvoke(call_id=call_id or uuid.uuid4().hex, name="count", arguments=arguments)


async def rows(engine: AsyncEngine, call_id: str) -> int:
    async with engine.connect() as conn:
        query = select(func.count()).select_from(calls).where(calls.c.call_id == call_id)
        return int((await conn.execute(query)).scalar_one())


async def test_redelivered_call_returns_the_stored_result_without_running_again(
    engine: AsyncEngine,
) -> None:
    counter = Counter()
    registry = registry_with(counter)
    cmd = command(n=1)
    first = await invoke_once(engine, registry, "acme", cmd)
    second = await invoke_once(engine, registry, "acme", cmd)
    assert len(counter.runs) == 1
    assert first.ok and first.output["run"] == 1
    assert second == first
    assert await rows(engine, cmd.call_id) == 1


async def test_concurrent_deliveries_run_the_tool_once(engine: AsyncEngine) -> None:
    counter = Counter(delay=0.3)
    registry = registry_with(counter)
    cmd = command(n=2)
    results = await asyncio.gather(
        *(invoke_once(engine, registry, "acme", cmd, poll=0.02) for _ in range(3))
    )
    assert len(counter.runs) == 1
    assert results[0] == results[1] == results[2]
    assert results[0].ok


async def test_the_same_call_id_in_another_tenant_is_another_call(engine: AsyncEngine) -> None:
    counter = Counter()
    registry = registry_with(counter)
    call_id = uuid.uuid4().hex
    acme = await invoke_once(engine, registry, "acme", command(call_id))
    globex = await invoke_once(engine, registry, "globex", command(call_id))
    assert len(counter.runs) == 2
    assert acme.output["run"] == 1 and globex.output["run"] == 2


async def test_a_call_id_used_by_another_user_does_not_answer_with_their_result(
    engine: AsyncEngine,
) -> None:
    counter = Counter()
    call_id = uuid.uuid4().hex
    alice = msgspec.structs.replace(command(call_id, n=1), user="alice")
    await invoke_once(engine, registry_with(counter), "acme", alice)

    mallory = msgspec.structs.replace(command(call_id, n=1), user="mallory")
    with pytest.raises(CallIdTaken):
        await invoke_once(engine, registry_with(counter), "acme", mallory)
    assert len(counter.runs) == 1


async def test_a_call_id_used_for_another_tool_is_refused(engine: AsyncEngine) -> None:
    call_id = uuid.uuid4().hex
    await invoke_once(engine, registry_with(Counter()), "acme", command(call_id))
    other = ToolInvoke(call_id=call_id, name="calculator", arguments={})
    with pytest.raises(CallIdTaken):
        await invoke_once(engine, registry_with(Counter()), "acme", other)


async def test_a_refused_call_is_stored_like_any_other(engine: AsyncEngine) -> None:
    counter = Counter()
    registry = registry_with(counter)
    cmd = command(n="three")
    first = await invoke_once(engine, registry, "acme", cmd)
    again = await invoke_once(engine, registry, "acme", cmd)
    assert not first.ok and "is not of type 'integer'" in (first.error or "")
    assert again == first
    assert counter.runs == []


async def test_a_delivery_waiting_on_a_live_claim_gives_up_for_a_later_retry(
    engine: AsyncEngine,
) -> None:
    counter = Counter()
    cmd = command()
    await claim(engine, "acme", cmd.call_id, cmd.name, lease=60)  # held by a running delivery
    with pytest.raises(CallInProgress, match="is being run by another delivery"):
        await invoke_once(engine, registry_with(counter), "acme", cmd, wait=0.2, poll=0.05)
    assert counter.runs == []


async def test_a_claim_is_taken_over_once_the_clock_passes_its_lease(engine: AsyncEngine) -> None:
    counter, clock = Counter(), Clock()
    cmd = command()
    await claim(engine, "acme", cmd.call_id, cmd.name, lease=60, clock=clock)  # its holder died
    clock.advance(59)
    with pytest.raises(CallInProgress):
        await invoke_once(engine, registry_with(counter), "acme", cmd, wait=0, clock=clock)

    clock.advance(2)
    result = await invoke_once(engine, registry_with(counter), "acme", cmd, clock=clock)

    assert result.ok
    assert len(counter.runs) == 1


async def test_a_claim_whose_lease_ran_out_is_taken_over(engine: AsyncEngine) -> None:
    counter = Counter()
    cmd = command()
    await claim(engine, "acme", cmd.call_id, cmd.name, lease=-1)  # its holder died mid-run
    result = await invoke_once(engine, registry_with(counter), "acme", cmd)
    assert result.ok
    assert len(counter.runs) == 1
    assert await invoke_once(engine, registry_with(counter), "acme", cmd) == result
    assert len(counter.runs) == 1
