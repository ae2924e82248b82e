"""What Temporal users rely on, shown on the saga engine over real JetStream and SQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.publish import envelope_for, publish
from sagas import queries
from schemas.envelope import new_id
from schemas.sagas import SagaQuery, SagaStart
from tests.sagas.conftest import Stack


async def test_a_three_step_saga_completes_with_each_effect_once(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"
    assert row["result"] == {"outputs": [f"{saga_id}:1", f"{saga_id}:2"]}
    assert stack.effects.applied[f"{saga_id}:1"] == 1
    assert stack.effects.applied[f"{saga_id}:2"] == 1


async def test_history_records_every_step_with_timings(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    history = await queries.get_history(stack.db, saga_id)
    events = [(h["step"], h["event"]) for h in history]
    assert events[0] == (None, "started")
    assert ("first", "command_sent") in events and ("third", "step") in events
    assert events[-1] == ("done", "completed")
    replies = [h for h in history if h["event"] == "reply"]
    assert len(replies) == 2 and all(h["duration_ms"] >= 0 for h in replies)


async def test_a_failing_step_is_retried_with_backoff_then_succeeds(stack: Stack) -> None:
    saga_id = await stack.start("retrying", {"fail_times": 2})
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"
    history = await queries.get_history(stack.db, saga_id)
    retries = [h["detail"] for h in history if h["event"] == "retry_scheduled"]
    assert [r["attempt"] for r in retries] == [2, 3]
    assert retries[1]["in_s"] == pytest.approx(2 * retries[0]["in_s"])
    sent = [h["detail"]["message_id"] for h in history if h["event"] == "command_sent"]
    assert len(set(sent)) == 3, "each attempt is a new message, not eaten by the dedup window"


async def test_retries_stop_at_max_attempts_and_the_saga_fails(stack: Stack) -> None:
    saga_id = await stack.start("retrying", {"fail_times": 5, "max_attempts": 2})
    row = await stack.finished(saga_id)
    assert row["state"] == "failed"
    assert "flaky tool is down" in row["error"]


async def test_a_non_retryable_error_fails_the_saga_at_once(stack: Stack) -> None:
    saga_id = await stack.start("refused")
    row = await stack.finished(saga_id)
    assert row["state"] == "failed"
    assert "refuses every call" in row["error"]
    assert stack.effects.deliveries[f"{saga_id}:1"] == 1


async def test_an_approval_signal_advances_a_waiting_saga(stack: Stack) -> None:
    saga_id = await stack.start("approval")
    for _ in range(100):
        row = await queries.get_instance(stack.db, saga_id)
        if row and (row["waiting"] or {}).get("kind") == "signal":
            break
        await asyncio.sleep(0.05)
    await stack.signal(saga_id, "approve", {"by": "alice"})
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"
    assert row["result"] == {"approved_by": "alice"}


async def test_a_signal_sent_before_the_saga_waits_is_buffered(stack: Stack) -> None:
    saga_id = await stack.start("versioned")
    await stack.signal(saga_id, "go")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"


async def test_cancel_runs_compensations_in_reverse_order(stack: Stack) -> None:
    saga_id = await stack.start("approval")
    for _ in range(100):
        row = await queries.get_instance(stack.db, saga_id)
        if row and (row["waiting"] or {}).get("kind") == "signal":
            break
        await asyncio.sleep(0.05)
    before = len(stack.effects.order)
    await stack.cancel(saga_id)
    row = await stack.finished(saga_id)
    assert row["state"] == "compensated"
    assert stack.effects.order[before:] == ["undo:review", "undo:draft"]


async def test_a_cancel_during_a_fan_out_undoes_its_calls_only_after_they_took_effect(
    stack: Stack,
) -> None:
    before = len(stack.effects.order)
    stack.effects.delay = 0.5  # the calls are still in flight when the cancel comes
    try:
        saga_id = await stack.start("undone_fan_out")
        await _waiting(stack, saga_id, "all")
        await stack.cancel(saga_id)
        row = await stack.finished(saga_id)
    finally:
        stack.effects.delay = 0.0
    assert row["state"] == "compensated"
    undoable = [e for e in stack.effects.order[before:] if not e.startswith("lookup")]
    assert sorted(undoable[:2]) == ["effect:left", "effect:right"]
    assert sorted(undoable[2:]) == ["undo:left", "undo:right"]


async def test_a_parent_awaits_its_child_saga(stack: Stack) -> None:
    saga_id = await stack.start("parent")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"
    assert row["result"]["child_state"] == "completed"
    children = await queries.list_instances(stack.db, saga_type="three_steps", limit=500)
    assert any(c["parent_id"] == saga_id for c in children)


async def test_starting_an_existing_id_is_rejected_by_default(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    with pytest.raises(RuntimeError, match="already exists"):
        await stack.start("three_steps", saga_id=saga_id)


async def test_a_running_id_with_use_existing_returns_the_running_instance(stack: Stack) -> None:
    saga_id = await stack.start("versioned")
    again = await stack.start("versioned", saga_id=saga_id, id_conflict="use_existing")
    assert again == saga_id
    with pytest.raises(RuntimeError, match="already running"):
        await stack.start("versioned", saga_id=saga_id)
    await stack.signal(saga_id, "go")
    await stack.finished(saga_id)


async def test_a_failed_id_can_be_reused_when_the_policy_allows(stack: Stack) -> None:
    saga_id = await stack.start("refused")
    await stack.finished(saga_id)
    with pytest.raises(RuntimeError, match="already exists"):
        await stack.start("refused", saga_id=saga_id, id_reuse="reject_duplicate")
    await stack.start("three_steps", saga_id=saga_id, id_reuse="allow_duplicate_failed_only")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed" and row["run"] == 2


async def test_listing_filters_by_type_state_and_tenant_with_paging(stack: Stack) -> None:
    ids = [await stack.start("three_steps") for _ in range(3)]
    for saga_id in ids:
        await stack.finished(saga_id)
    page1 = await queries.list_instances(
        stack.db, tenant="acme", saga_type="three_steps", state="completed", limit=2
    )
    page2 = await queries.list_instances(
        stack.db, tenant="acme", saga_type="three_steps", state="completed", limit=2, offset=2
    )
    assert len(page1) == 2 and len(page2) >= 1
    assert not {r["id"] for r in page1} & {r["id"] for r in page2}
    assert await queries.list_instances(stack.db, tenant="other") == []


async def test_a_group_mode_saga_completes_with_each_effect_once(stack: Stack) -> None:
    saga_id = await stack.start("grouped")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed", row["error"]
    assert row["result"] == {"outputs": [f"{saga_id}:{n}" for n in (1, 2, 3, 4)]}
    for n in (1, 2, 3, 4):
        assert stack.effects.applied[f"{saga_id}:{n}"] == 1
        assert stack.effects.deliveries[f"{saga_id}:{n}"] == 1


async def test_a_group_mode_saga_records_every_step_in_its_history(stack: Stack) -> None:
    saga_id = await stack.start("grouped")
    await stack.finished(saga_id)
    history = await queries.get_history(stack.db, saga_id)
    steps = [h["step"] for h in history if h["event"] == "step"]
    assert steps == ["g_first", "g_second", "g_joined", "g_after_reply", "g_done"]


async def test_calls_sent_at_once_are_all_in_flight_before_any_reply(stack: Stack) -> None:
    saga_id = await stack.start("grouped")
    await stack.finished(saga_id)
    history = await queries.get_history(stack.db, saga_id)
    sent = [h for h in history if h["event"].startswith("command_sent")]
    assert len(sent) == 4
    assert sent[1]["seq"] == sent[2]["seq"], "the two calls went out in one transition"


async def test_a_reply_event_reaches_the_caller_before_the_saga_finishes(stack: Stack) -> None:
    saga_id = new_id()
    seen = []
    async with stack.requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="grouped", saga_id=saga_id)
        env = envelope_for(cmd, tenant="acme", correlation_id=saga_id)
        await publish(stack.requester.bus, cmd, env)
        async with asyncio.timeout(30):
            while not seen or seen[-1].schema != "sagas.finished":
                seen.append(await events.get())
    schemas = [e.schema for e in seen]
    assert schemas.index("sagas.replied") < schemas.index("sagas.finished")
    replied = next(e for e in seen if e.schema == "sagas.replied").payload
    assert replied.result == {"outputs": [f"{saga_id}:{n}" for n in (1, 2, 3)]}


async def test_a_query_sent_after_a_group_mode_saga_finished_reports_it_ended(
    stack: Stack,
) -> None:
    """A retried request asks after the ``sagas.finished`` it may have missed: the answer never
    predates an event the saga already sent."""
    saga_id = new_id()
    async with stack.requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="grouped", saga_id=saga_id)
        env = envelope_for(cmd, tenant="acme", correlation_id=saga_id)
        await publish(stack.requester.bus, cmd, env)
        async with asyncio.timeout(30):
            while (await events.get()).schema != "sagas.finished":
                pass
    _, answer = await stack.requester.request(
        SagaQuery(saga_id=saga_id), tenant="acme", expect={"sagas.queried"}
    )
    assert answer.payload.saga is not None
    assert answer.payload.saga.state == "completed"


async def test_a_failed_call_of_several_reaches_the_next_step_as_its_failure(
    stack: Stack,
) -> None:
    saga_id = await stack.start("joined_failure")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed", row["error"]
    assert row["result"] == {"kinds": ["ToolResult", "CommandFailed"]}


async def test_a_saga_with_typed_data_stores_it_as_json_and_completes(stack: Stack) -> None:
    saga_id = await stack.start("typed")
    row = await stack.finished(saga_id)
    assert row["state"] == "completed", row["error"]
    assert row["result"] == {"outputs": [f"{saga_id}:1", f"{saga_id}:2"], "calls": 2}
    assert row["data"] == {"outputs": [f"{saga_id}:1", f"{saga_id}:2"], "calls": 2}


async def test_steps_are_stored_under_their_registered_names(stack: Stack) -> None:
    saga_id = await stack.start("typed")
    await stack.finished(saga_id)
    history = await queries.get_history(stack.db, saga_id)
    steps = [h["step"] for h in history if h["event"] == "step"]
    assert steps == ["ask_first", "ask_second", "typed_done"]


async def test_a_detailed_query_names_a_parents_children_and_its_working_data(
    stack: Stack,
) -> None:
    """What the operator console shows on a saga's page: where it is, and what it started."""
    saga_id = await stack.start("parent")
    await stack.finished(saga_id)
    _, answer = await stack.requester.request(
        SagaQuery(saga_id=saga_id, include_history=True), tenant="acme", expect={"sagas.queried"}
    )
    parent = answer.payload.saga
    assert parent is not None and parent.data is not None
    assert len(parent.children) == 1
    _, answer = await stack.requester.request(
        SagaQuery(saga_id=parent.children[0], include_history=True),
        tenant="acme",
        expect={"sagas.queried"},
    )
    child = answer.payload.saga
    assert child is not None and child.parent_id == saga_id and child.saga_type == "three_steps"


async def test_a_plain_query_carries_no_working_data(stack: Stack) -> None:
    saga_id = await stack.start("three_steps")
    await stack.finished(saga_id)
    _, answer = await stack.requester.request(
        SagaQuery(saga_id=saga_id), tenant="acme", expect={"sagas.queried"}
    )
    assert answer.payload.saga is not None
    assert answer.payload.saga.data is None and answer.payload.saga.children == []


async def _waiting(stack: Stack, saga_id: str, kind: str) -> dict[str, Any]:
    for _ in range(400):
        row = await queries.get_instance(stack.db, saga_id)
        if row and (row["waiting"] or {}).get("kind") == kind:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"saga {saga_id} never waited for {kind}")


async def _approve_children(stack: Stack, saga_id: str) -> None:
    """Left, then right once left has ended: their undos are registered in that order."""
    for label in ("left", "right"):
        await _waiting(stack, f"{saga_id}.{label}", "signal")
        await stack.signal(f"{saga_id}.{label}", "approve", {"by": label})
        await stack.finished(f"{saga_id}.{label}")


async def test_children_started_at_once_run_side_by_side_and_join(stack: Stack) -> None:
    saga_id = await stack.start("fan_out")
    for label in ("left", "right"):  # both wait for approval at the same time
        await _waiting(stack, f"{saga_id}.{label}", "signal")
    await _approve_children(stack, saga_id)
    await _waiting(stack, saga_id, "signal")
    await stack.signal(saga_id, "decide", {"approved": True})
    row = await stack.finished(saga_id)
    assert row["state"] == "completed"
    assert row["result"] == {"states": ["completed", "completed"]}


async def test_a_failure_with_compensation_undoes_the_ended_children_in_reverse(
    stack: Stack,
) -> None:
    saga_id = await stack.start("fan_out")
    await _approve_children(stack, saga_id)
    await _waiting(stack, saga_id, "signal")
    before = len(stack.effects.order)
    await stack.signal(saga_id, "decide", {"approved": False})
    row = await stack.finished(saga_id)
    assert row["state"] == "compensated" and row["error"] == "rejected"
    assert stack.effects.order[before:] == ["undo:right", "undo:left"]


async def test_cancelling_a_parent_cancels_every_running_child(stack: Stack) -> None:
    saga_id = await stack.start("fan_out")
    for label in ("left", "right"):
        await _waiting(stack, f"{saga_id}.{label}", "signal")
    await stack.cancel(saga_id)
    row = await stack.finished(saga_id)
    assert row["state"] in ("compensated", "cancelled")
    for label in ("left", "right"):
        child = await stack.finished(f"{saga_id}.{label}")
        assert child["state"] == "compensated"
