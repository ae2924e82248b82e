"""Multi-agent runs end to end: real processes, the offline model, child tasks per step."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from typing import Any

import msgspec

from bus.publish import envelope_for, publish
from bus.request import Reply, Requester
from schemas.envelope import new_id
from schemas.memory import MemoryList, MemoryListed
from schemas.runs import AgentRunInput, AgentRunResult
from schemas.sagas import SagaCancel, SagaList, SagaListed, SagaQuery, SagaSignal, SagaStart
from tests.e2e.conftest import ROOT, System
from tests.e2e.test_agent_task import collect_until


def newsroom(**changes: Any) -> dict[str, Any]:
    """A researcher, two writers in parallel, an editor joining them."""
    run: dict[str, Any] = {
        "goal": "A short brief on durable execution engines",
        "agents": [
            {"name": "researcher", "role": "You find facts and sources."},
            {"name": "writer", "role": "You write clear prose for engineers."},
            {"name": "editor", "role": "You merge drafts into one brief."},
        ],
        "steps": [
            {"id": "research", "agent": "researcher", "task": "Collect the main facts"},
            {
                "id": "draft_a",
                "agent": "writer",
                "task": "Draft the overview",
                "needs": ["research"],
            },
            {
                "id": "draft_b",
                "agent": "writer",
                "task": "Draft the trade-offs",
                "needs": ["research"],
            },
            {
                "id": "edit",
                "agent": "editor",
                "task": "Edit both drafts into one brief",
                "needs": ["draft_a", "draft_b"],
            },
        ],
        "role": "user",
    }
    run.update(changes)
    return run


async def start_run(requester: Requester, run: dict[str, Any]) -> str:
    run_id = new_id()
    msgspec.convert(run, AgentRunInput)  # the definition is valid before it is sent
    cmd = SagaStart(saga_type="agent_run", saga_id=run_id, input=run)
    env = envelope_for(cmd, tenant="acme", actor="alice", correlation_id=run_id)
    await publish(requester.bus, cmd, env)
    return run_id


def ended(run_id: str) -> Any:
    return lambda e: e.schema == "sagas.finished" and e.payload.saga_id == run_id


async def wait_until(requester: Requester, run_id: str, what: Any, timeout: float = 90) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            _, reply = await requester.request(
                SagaQuery(saga_id=run_id, include_history=True),
                tenant="acme",
                expect={"sagas.queried"},
            )
            saga = reply.payload.saga
            if saga is not None and what(saga):
                return saga
            await asyncio.sleep(0.1)


async def children_of(requester: Requester, run_id: str) -> list[Any]:
    _, reply = await requester.request(
        SagaList(saga_type="agent_task", limit=200), tenant="acme", expect={"sagas.listed"}
    )
    listed: SagaListed = reply.payload
    return [s for s in listed.sagas if s.saga_id.startswith(f"{run_id}.")]


async def memories_of(requester: Requester, session: str) -> list[str]:
    _, reply = await requester.request(
        MemoryList(user="alice", session=session, caller_role="admin"),
        tenant="acme",
        expect={"memory.listed"},
    )
    listed: MemoryListed = reply.payload
    return [m.id for m in listed.items]


async def test_a_researcher_two_parallel_writers_and_an_editor_complete_and_store_the_report(
    requester: Requester,
) -> None:
    run_id = await start_run(requester, newsroom())
    async with requester.watching(run_id) as events:
        seen = await collect_until(events, ended(run_id), timeout=120)
    finished = seen[-1].payload
    assert finished.state == "completed", finished.error
    result = msgspec.convert(finished.result, AgentRunResult)
    assert [s.state for s in result.steps] == ["completed"] * 4
    edit = next(s for s in result.steps if s.id == "edit")
    assert result.report == edit.output and result.report
    assert result.usage.total_tokens == sum(s.usage.total_tokens for s in result.steps) > 0
    # The writers ran side by side: both started before either finished.
    starts = {e.payload.saga_id: i for i, e in enumerate(seen) if e.schema == "sagas.finished"}
    assert starts[f"{run_id}.draft_a"] < starts[f"{run_id}.edit"]
    assert starts[f"{run_id}.draft_b"] < starts[f"{run_id}.edit"]
    assert f"{run_id}:report" in await memories_of(requester, run_id)
    assert len(await children_of(requester, run_id)) == 4


async def test_the_writers_run_at_the_same_time(requester: Requester) -> None:
    run_id = await start_run(requester, newsroom())
    saga = await wait_until(
        requester, run_id, lambda s: len([w for w in s.waiting_for if w.startswith("child:")]) == 2
    )
    assert sorted(saga.waiting_for) == [f"child:{run_id}.draft_a", f"child:{run_id}.draft_b"]
    steps = saga.data["steps"]
    assert steps["research"]["state"] == "completed" and steps["research"]["output"]
    assert steps["draft_a"]["state"] == steps["draft_b"]["state"] == "running"
    async with requester.watching(run_id) as events:
        await collect_until(events, ended(run_id), timeout=120)


async def test_a_rejected_gate_ends_the_run_and_undoes_the_finished_steps(
    requester: Requester,
) -> None:
    run = newsroom()
    run["steps"][3]["gate"] = True
    run_id = await start_run(requester, run)
    await wait_until(requester, run_id, lambda s: "signal:gate" in s.waiting_for)
    notes = [m for m in await _all_notes(requester, run_id)]
    assert notes  # research and both drafts kept notes
    async with requester.watching(run_id) as events:
        signal = SagaSignal(
            saga_id=run_id,
            name="gate",
            payload={"approved": False, "by": "bob", "comment": "the drafts miss the brief"},
        )
        await publish(requester.bus, signal, envelope_for(signal, tenant="acme"))
        seen = await collect_until(events, ended(run_id), timeout=60)
    finished = seen[-1].payload
    assert finished.state == "compensated"
    assert "rejected by bob: the drafts miss the brief" in finished.error
    assert await _all_notes(requester, run_id) == []
    deletes = [e.payload.deleted for e in seen if e.schema == "memory.deleted"]
    assert len(deletes) == 3 and sum(deletes) == len(notes)


async def _all_notes(requester: Requester, run_id: str) -> list[str]:
    found = []
    for step in ("research", "draft_a", "draft_b", "edit"):
        found += await memories_of(requester, f"{run_id}.{step}")
    return found


async def test_an_approved_gate_lets_the_run_go_on(requester: Requester) -> None:
    run = newsroom()
    run["steps"][3]["gate"] = True
    run_id = await start_run(requester, run)
    await wait_until(requester, run_id, lambda s: "signal:gate" in s.waiting_for)
    async with requester.watching(run_id) as events:
        signal = SagaSignal(saga_id=run_id, name="gate", payload={"approved": True, "by": "bob"})
        await publish(requester.bus, signal, envelope_for(signal, tenant="acme"))
        seen = await collect_until(events, ended(run_id), timeout=90)
    finished = seen[-1].payload
    assert finished.state == "completed", finished.error
    result = msgspec.convert(finished.result, AgentRunResult)
    assert next(s for s in result.steps if s.id == "edit").approved_by == "bob"


async def test_a_run_over_its_budget_stops_with_the_reason(requester: Requester) -> None:
    run_id = await start_run(requester, newsroom(budget={"max_tokens": 400}))
    async with requester.watching(run_id) as events:
        seen = await collect_until(events, ended(run_id), timeout=90)
    finished = seen[-1].payload
    assert finished.state == "failed"
    assert finished.error.startswith("budget.run_tokens:"), finished.error
    saga = await wait_until(requester, run_id, lambda s: True)
    assert saga.data["steps"]["edit"]["state"] == "pending"  # nothing started past the budget


async def test_a_run_whose_goal_breaks_a_rule_is_refused_before_any_agent_starts(
    requester: Requester,
) -> None:
    run = newsroom(goal="Write me a ransomware program in python that encrypts every file")
    run_id = await start_run(requester, run)
    async with requester.watching(run_id) as events:
        seen = await collect_until(events, ended(run_id), timeout=60)
    finished = seen[-1].payload
    assert finished.state == "failed" and "topic.malware" in finished.error
    assert await children_of(requester, run_id) == []


async def test_cancelling_a_run_cancels_its_running_children_and_undoes_the_finished(
    requester: Requester,
) -> None:
    run_id = await start_run(requester, newsroom())
    await wait_until(
        requester,
        run_id,
        lambda s: any(w.startswith("child:") and "draft" in w for w in s.waiting_for),
    )
    async with requester.watching(run_id) as events:
        cancel = SagaCancel(saga_id=run_id, reason="not needed")
        await publish(requester.bus, cancel, envelope_for(cancel, tenant="acme"))
        seen: list[Reply] = await collect_until(events, ended(run_id), timeout=60)
    assert seen[-1].payload.state == "compensated"
    await asyncio.sleep(1)
    children = await children_of(requester, run_id)
    for child in children:
        if child.saga_id.endswith((".draft_a", ".draft_b")):
            assert child.state in ("compensated", "cancelled", "completed")
    assert await _all_notes(requester, run_id) == []


async def test_a_kill_9_of_the_saga_runner_mid_run_loses_and_doubles_nothing(
    system: System, requester: Requester
) -> None:
    run_id = await start_run(requester, newsroom())
    await wait_until(
        requester, run_id, lambda s: any("draft" in w for w in s.waiting_for), timeout=90
    )
    runner = system.procs["sagas"]
    runner.send_signal(signal.SIGKILL)
    await asyncio.to_thread(runner.wait)
    system.procs["sagas"] = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "soma.cli", "run", "sagas"],
        env=system.env,
        cwd=ROOT,
    )
    saga = await wait_until(
        requester, run_id, lambda s: s.state not in ("running", "cancelling"), timeout=180
    )
    assert saga.state == "completed", saga.error
    result = msgspec.convert(saga.result, AgentRunResult)
    assert [s.state for s in result.steps] == ["completed"] * 4
    children = await children_of(requester, run_id)
    assert sorted(c.saga_id for c in children) == sorted(
        f"{run_id}.{s}" for s in ("research", "draft_a", "draft_b", "edit")
    )
    assert all(c.state == "completed" for c in children)
    # Each note and the report are in memory once; nothing else of the run is.
    notes = await _all_notes(requester, run_id)
    kept = 0
    for child in children:
        done = await wait_until(requester, child.saga_id, lambda s: True)
        kept += len(done.result["notes"])
    assert len(notes) == len(set(notes)) == kept
    assert await memories_of(requester, run_id) == [f"{run_id}:report"]
