"""The agent task end to end: plan, steps, an approval signal, a report; cancel compensates."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from bus.publish import envelope_for, publish
from bus.request import Reply, Requester
from schemas.envelope import new_id
from schemas.sagas import SagaCancel, SagaQuery, SagaSignal, SagaStart
from schemas.tasks import AgentTaskInput, AgentTaskResult


async def start_task(requester: Requester, task: AgentTaskInput) -> str:
    saga_id = new_id()
    cmd = SagaStart(saga_type="agent_task", saga_id=saga_id, input=msgspec.to_builtins(task))
    await publish(requester.bus, cmd, envelope_for(cmd, tenant="acme", correlation_id=saga_id))
    return saga_id


async def collect_until(
    events: asyncio.Queue[Reply], stop: Any, timeout: float = 60
) -> list[Reply]:
    seen: list[Reply] = []
    async with asyncio.timeout(timeout):
        while True:
            event = await events.get()
            seen.append(event)
            if stop(event):
                return seen


async def send(requester: Requester, message: Any) -> None:
    await publish(requester.bus, message, envelope_for(message, tenant="acme"))


async def wait_for_approval_wait(requester: Requester, saga_id: str) -> None:
    async with asyncio.timeout(60):
        while True:
            _, reply = await requester.request(
                SagaQuery(saga_id=saga_id), tenant="acme", expect={"sagas.queried"}
            )
            if reply.payload.saga and "signal:approve" in reply.payload.saga.waiting_for:
                return
            await asyncio.sleep(0.1)


async def test_an_approval_signal_advances_a_waiting_agent_task_to_its_report(
    requester: Requester,
) -> None:
    task = AgentTaskInput(
        goal="Compare durable execution engines", max_steps=2, require_approval=True
    )
    saga_id = new_id()
    async with requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="agent_task", saga_id=saga_id, input=msgspec.to_builtins(task))
        await publish(requester.bus, cmd, envelope_for(cmd, tenant="acme", correlation_id=saga_id))
        await wait_for_approval_wait(requester, saga_id)
        await send(
            requester,
            SagaSignal(saga_id=saga_id, name="approve", payload={"approved": True, "by": "alice"}),
        )
        seen = await collect_until(events, lambda e: e.schema == "sagas.finished")
    finished = seen[-1].payload
    assert finished.state == "completed", finished.error
    result = msgspec.convert(finished.result, AgentTaskResult)
    assert result.approved_by == "alice"
    assert 1 <= len(result.notes) <= 2 and result.report
    assert sum(e.schema == "memory.added" for e in seen) == len(result.notes)


async def test_cancelling_an_agent_task_deletes_its_notes_in_reverse_order(
    requester: Requester,
) -> None:
    task = AgentTaskInput(goal="Survey saga patterns", max_steps=2, require_approval=True)
    saga_id = new_id()
    async with requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="agent_task", saga_id=saga_id, input=msgspec.to_builtins(task))
        await publish(requester.bus, cmd, envelope_for(cmd, tenant="acme", correlation_id=saga_id))
        await wait_for_approval_wait(requester, saga_id)
        await send(requester, SagaCancel(saga_id=saga_id, reason="no longer needed"))
        seen = await collect_until(events, lambda e: e.schema == "sagas.finished")
    assert seen[-1].payload.state == "compensated"
    added = [e.payload.id for e in seen if e.schema == "memory.added"]
    deleted_in_order = [e for e in seen if e.schema == "memory.deleted"]
    assert added and len(deleted_in_order) == len(added)
    assert all(e.payload.deleted == 1 for e in deleted_in_order)
