"""The saga engine's behaviours on SQLite, with the clock moved rather than slept through and
the bus replaced by a recording publisher (tests/sagas/harness.py). The end-to-end tests in
test_engine.py prove the same engine behind a real runner and NATS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine as SyncEngine

from sagas import definitions as shipped
from sagas.definition import Complete, Definition, Run, WaitSignal
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.common import FailureCode
from schemas.memory import MemoryRecalled, MemoryStored
from schemas.policy import PolicyEvaluated
from schemas.sagas import SagaFinished, SagaReplied
from schemas.slm import ChatMessage, SlmCompleted
from schemas.tools import ToolInvoke, ToolResult
from tests.sagas.definitions import ALL
from tests.sagas.harness import Harness, Sent

Data = dict[str, Any]

# Signal waits with a timeout, with and without a step to go on to when it passes.
awaiting: Definition[Data] = Definition("awaiting", version=1, input_type=dict)


@awaiting.start
def wait_go(run: Run[Data]) -> WaitSignal:
    return WaitSignal("go", then=went, timeout=600, on_timeout=gave_up)


@awaiting.step
def went(run: Run[Data], payload: Data) -> Complete:
    return Complete({"went": True})


@awaiting.step
def gave_up(run: Run[Data]) -> Complete:
    return Complete({"went": False})


strict: Definition[Data] = Definition("strict", version=1, input_type=dict)


@strict.start
def wait_strictly(run: Run[Data]) -> WaitSignal:
    return WaitSignal("go", then=went_strictly, timeout=600)


@strict.step
def went_strictly(run: Run[Data], payload: Data) -> Complete:
    return Complete({"went": True})


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path, [*ALL, awaiting, strict])
    yield harness
    await harness.close()


def done(command: Sent, output: Any = None) -> ToolResult:
    """The tools service's answer to a ``ToolInvoke``: it worked, with ``output``."""
    invoke: ToolInvoke = command.message
    return ToolResult(call_id=invoke.call_id, name=invoke.name, ok=True, output=output)


async def test_a_three_step_saga_completes_with_each_command_sent_once(h: Harness) -> None:
    saga_id = await h.start("three_steps")
    await h.answer(h.command(ToolInvoke), done(h.command(ToolInvoke), "one"))
    await h.answer(h.command(ToolInvoke), done(h.command(ToolInvoke), "two"))

    row = await h.instance(saga_id)
    assert row["state"] == "completed", row
    assert row["result"] == {"outputs": ["one", "two"]}
    assert [c.message.call_id for c in h.commands()] == [f"{saga_id}:1", f"{saga_id}:2"]
    assert [e.state for e in h.events(SagaFinished)] == ["completed"]


async def test_a_retryable_failure_is_sent_again_after_exactly_its_backoff(h: Harness) -> None:
    await h.start("retrying", {"max_attempts": 5})
    failed_at = h.clock()
    await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)

    await h.at(failed_at + 0.199)
    assert len(h.commands()) == 1, "not sent again before its backoff"
    await h.at(failed_at + 0.2)  # Retry(initial=0.2): the first backoff
    assert [c.attempt for c in h.commands()] == [1, 2]

    failed_again = h.clock()
    await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)
    await h.at(failed_again + 0.399)
    assert len(h.commands()) == 2, "the second backoff doubles"
    await h.at(failed_again + 0.4)
    assert [c.attempt for c in h.commands()] == [1, 2, 3]
    assert len({c.id for c in h.commands()}) == 3, "each attempt has its own message id"


async def test_a_retried_call_gives_up_after_max_attempts_with_the_failures_code(
    h: Harness,
) -> None:
    saga_id = await h.start("retrying", {"max_attempts": 3})
    for _ in range(2):
        await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)
        await h.advance(60)
    await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True, error="no route")

    row = await h.instance(saga_id)
    assert len(h.commands()) == 3
    assert row["state"] == "failed", row
    assert row["error_code"] == FailureCode.UNAVAILABLE
    assert "no route" in row["error"]
    assert [e.error_code for e in h.events(SagaFinished)] == [FailureCode.UNAVAILABLE]
    await h.advance(3600)
    assert len(h.commands()) == 3, "nothing is sent after the saga ended"


async def test_a_refusal_that_is_not_retryable_fails_the_saga_at_once(h: Harness) -> None:
    saga_id = await h.start("refused")
    await h.fail(h.command(), FailureCode.FORBIDDEN, error="not granted")

    row = await h.instance(saga_id)
    assert (row["state"], row["error_code"]) == ("failed", FailureCode.FORBIDDEN)
    await h.advance(3600)
    assert len(h.commands()) == 1


async def test_a_calls_start_to_close_timeout_fires_when_the_clock_passes_it(h: Harness) -> None:
    saga_id = await h.start("three_steps")
    sent_at = h.clock()

    await h.at(sent_at + 29.999)  # three_steps calls with timeout=30
    assert [e["event"] for e in await h.history(saga_id)].count("timed_out") == 0
    await h.at(sent_at + 30)
    assert [e["event"] for e in await h.history(saga_id)].count("timed_out") == 1

    await h.advance(1)  # Temporal's default retry: again after 1 s
    assert [c.attempt for c in h.commands()] == [1, 2]
    assert (await h.instance(saga_id))["state"] == "running"


async def test_a_reply_to_an_attempt_that_timed_out_is_dropped(h: Harness) -> None:
    saga_id = await h.start("three_steps")
    first = h.command()
    await h.advance(30)
    await h.advance(1)

    await h.answer(first, done(first, "late"))
    row = await h.instance(saga_id)
    assert row["step"] == "first" and row["waiting"]["attempt"] == 2, row
    await h.answer(h.command(), done(h.command(), "on time"))
    assert (await h.instance(saga_id))["data"]["outputs"] == ["on time"]


async def test_a_sleep_fires_at_its_time_and_not_before(h: Harness) -> None:
    saga_id = await h.start("sleeper", {"seconds": 86_400})
    slept_at = h.clock()

    await h.at(slept_at + 86_399.5)
    assert (await h.instance(saga_id))["state"] == "running"
    await h.at(slept_at + 86_400)
    assert (await h.instance(saga_id))["state"] == "completed"


async def test_a_signal_wait_goes_to_its_timeout_step_when_it_times_out(h: Harness) -> None:
    saga_id = await h.start("awaiting")
    waited_at = h.clock()

    await h.at(waited_at + 599)
    assert (await h.instance(saga_id))["state"] == "running"
    await h.at(waited_at + 600)
    row = await h.instance(saga_id)
    assert (row["state"], row["result"]) == ("completed", {"went": False})


async def test_a_signal_wait_without_a_timeout_step_fails_when_it_times_out(h: Harness) -> None:
    saga_id = await h.start("strict")
    await h.advance(600)

    row = await h.instance(saga_id)
    assert row["state"] == "failed"
    assert row["error"] == "timed out waiting for signal go"


async def test_a_signal_in_time_is_taken_and_its_timeout_never_fires(h: Harness) -> None:
    saga_id = await h.start("awaiting")
    await h.advance(599)
    await h.signal(saga_id, "go")
    await h.advance(3600)

    assert (await h.instance(saga_id))["result"] == {"went": True}


async def test_cancel_runs_the_compensations_in_reverse_order(h: Harness) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command(), "drafted"))
    await h.answer(h.command(), done(h.command(), "reviewed"))

    await h.cancel(saga_id)
    undo_review = h.command()
    await h.answer(undo_review, done(undo_review))
    undo_draft = h.command()
    await h.answer(undo_draft, done(undo_draft))

    undone = [c.message.arguments["label"] for c in h.commands() if c.message.name == "undo"]
    assert undone == ["review", "draft"]
    row = await h.instance(saga_id)
    assert row["state"] == "compensated", row
    assert [e.state for e in h.events(SagaFinished)] == ["compensated"]


async def test_a_cancel_while_a_call_is_in_flight_undoes_that_call_first_once_it_answers(
    h: Harness,
) -> None:
    """Its command is out and may still take effect: its undo waits for its answer, so that
    it cannot reach the handler first and undo nothing, then runs first."""
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command(), "drafted"))
    review = h.command()
    await h.cancel(saga_id)
    assert h.command() is review, "no undo before the call in flight has answered"

    await h.answer(review, done(review, "reviewed"))
    for _ in range(2):
        undo = h.command()
        await h.answer(undo, done(undo))

    undone = [c.message.arguments["label"] for c in h.commands() if c.message.name == "undo"]
    assert undone == ["review", "draft"]
    assert (await h.instance(saga_id))["state"] == "compensated"


async def test_a_call_in_flight_at_a_cancel_that_never_answers_is_undone_at_its_deadline(
    h: Harness,
) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command(), "drafted"))
    review = h.command()
    await h.cancel(saga_id)

    await h.advance(60)  # past the review call's start-to-close timeout
    undo = h.command()
    assert undo is not review and undo.message.arguments == {"label": "review"}
    await h.answer(undo, done(undo))
    await h.answer(h.command(), done(h.command()))
    assert (await h.instance(saga_id))["state"] == "compensated"


def undone(h: Harness) -> list[str]:
    """The labels of the undo commands sent so far, in the order they were sent."""
    undos = [c for c in h.commands(ToolInvoke) if c.message.name == "undo"]
    return [c.message.arguments["label"] for c in undos]


async def answer_the_undos(h: Harness, count: int) -> None:
    for _ in range(count):
        undo = h.command(ToolInvoke)
        await h.answer(undo, done(undo))


async def test_the_calls_of_a_fan_out_that_succeeded_are_undone_by_a_later_cancel(
    h: Harness,
) -> None:
    saga_id = await h.start("undone_fan_out")
    left, right, lookup = h.commands()
    await h.answer(right, done(right))
    await h.answer(left, done(left))
    await h.answer(lookup, done(lookup))

    await h.cancel(saga_id)
    await answer_the_undos(h, 2)

    assert undone(h) == ["left", "right"], "newest first: left succeeded last"
    assert (await h.instance(saga_id))["state"] == "compensated"


async def test_a_cancel_while_two_calls_of_a_fan_out_are_in_flight_undoes_both_once_they_answer(
    h: Harness,
) -> None:
    """As for a lone call: an undo sent before its call has answered could reach the handler
    first and undo nothing. The lookup, which has no undo, is not waited for."""
    saga_id = await h.start("undone_fan_out")
    left, right, _ = h.commands()
    await h.cancel(saga_id)
    assert len(h.commands()) == 3, "no undo before the calls in flight have answered"

    await h.answer(left, done(left))
    assert len(h.commands()) == 3, "nor before the last of them has"
    assert (await h.instance(saga_id))["state"] == "cancelling"
    await h.answer(right, done(right))
    await answer_the_undos(h, 2)

    assert undone(h) == ["right", "left"]
    assert (await h.instance(saga_id))["state"] == "compensated"


async def test_a_fan_out_call_that_fails_after_a_cancel_is_undone_all_the_same_and_not_retried(
    h: Harness,
) -> None:
    """As for a lone call: a failure may come after the effect took place (a timeout, a lost
    reply), and an undo of what never happened is harmless."""
    saga_id = await h.start("undone_fan_out")
    left, right, _ = h.commands()
    await h.cancel(saga_id)

    await h.fail(left, FailureCode.UNAVAILABLE, retryable=True)
    await h.answer(right, done(right))
    await h.advance(5)  # past the left call's backoff: it is not sent again
    await answer_the_undos(h, 2)

    assert [c.attempt for c in h.commands() if c.message.call_id == left.message.call_id] == [1]
    assert undone(h) == ["right", "left"]
    assert (await h.instance(saga_id))["state"] == "compensated"


async def test_a_reply_delivered_twice_after_a_cancel_is_undone_once(h: Harness) -> None:
    saga_id = await h.start("undone_fan_out")
    left, right, _ = h.commands()
    await h.cancel(saga_id)

    reply = done(left)
    env = await h.answer(left, reply)
    await h.deliver(reply, env)  # while the cancel still waits for the right call
    await h.answer(right, done(right))
    await h.deliver(reply, env)  # and once the compensations run
    await answer_the_undos(h, 2)

    assert undone(h) == ["right", "left"]
    assert (await h.instance(saga_id))["state"] == "compensated"


async def test_a_fan_out_call_in_flight_at_a_cancel_that_never_answers_is_undone_at_its_deadline(
    h: Harness,
) -> None:
    saga_id = await h.start("undone_fan_out")
    left, right, _ = h.commands()
    await h.cancel(saga_id)
    await h.answer(right, done(right))

    await h.advance(30)  # past the left call's start-to-close timeout
    await answer_the_undos(h, 2)

    assert undone(h) == ["left", "right"]
    assert (await h.instance(saga_id))["state"] == "compensated"


def of(h: Harness, saga_id: str) -> list[Sent]:
    """The calls ``saga_id`` sent (their call ids are its own)."""
    return [c for c in h.commands(ToolInvoke) if c.message.call_id.startswith(f"{saga_id}:")]


async def draft_and_review(h: Harness, child_id: str) -> None:
    """The ``approval`` child ``child_id`` does its two calls; it then waits for approval."""
    for label in ("draft", "review"):
        call = next(c for c in of(h, child_id) if c.message.arguments.get("label") == label)
        await h.answer(call, done(call))


async def test_a_cancelled_parent_undoes_a_child_completing_before_its_cancel_only_once_it_ended(
    h: Harness,
) -> None:
    """The child goes on until its cancel reaches it: an undo sent at the parent's cancel could
    come before the child's effects and undo nothing."""
    parent_id = await h.start("guarded")
    child_id = f"{parent_id}.child"
    await h.cancel(parent_id)  # its cancel to the child is sent, and not yet delivered
    await draft_and_review(h, child_id)
    assert undone(h) == [], "no undo while the child still runs"

    await h.signal(child_id, "approve")
    assert (await h.instance(child_id))["state"] == "completed"
    await answer_the_undos(h, 1)

    assert undone(h) == ["child"]
    assert (await h.instance(parent_id))["state"] == "compensated"


async def test_a_cancelled_parent_undoes_each_running_child_with_an_undo_once_it_has_ended(
    h: Harness,
) -> None:
    parent_id = await h.start("fan_out")
    left, right = f"{parent_id}.left", f"{parent_id}.right"
    await h.cancel(parent_id)
    await draft_and_review(h, left)
    await h.signal(left, "approve")  # the left child completes before its cancel reaches it
    assert undone(h) == [], "no undo while a child still runs"

    await h.cancel(right)  # the right child's cancel reaches it while its draft is out
    draft = of(h, right)[0]
    await h.answer(draft, done(draft))
    await answer_the_undos(h, 1)  # the right child undoes its own draft and ends
    assert (await h.instance(right))["state"] == "compensated"
    await answer_the_undos(h, 1)

    assert undone(h) == ["draft", "left"], "the right child undid itself: left is the parent's"
    assert (await h.instance(parent_id))["state"] == "compensated"


async def test_a_compensation_that_keeps_failing_ends_in_compensation_failed(h: Harness) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command(), "drafted"))
    review = h.command()
    await h.cancel(saga_id)  # waits for the review call in flight, whose undo comes first
    await h.answer(review, done(review))
    for _ in range(5):  # the engine's compensation retry: five attempts
        await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)
        await h.advance(60)

    row = await h.instance(saga_id)
    assert row["state"] == "compensation_failed", row
    assert [c.attempt for c in h.commands() if c.message.name == "undo"] == [1, 2, 3, 4, 5]


async def test_a_redelivered_reply_is_applied_once(h: Harness) -> None:
    saga_id = await h.start("three_steps")
    first = h.command()
    reply = done(first, "one")
    env = await h.answer(first, reply)

    await h.deliver(reply, env)
    assert [c.message.call_id for c in h.commands()] == [f"{saga_id}:1", f"{saga_id}:2"]
    steps = [e["step"] for e in await h.history(saga_id) if e["event"] == "step"]
    assert steps == ["first", "second"]
    assert (await h.instance(saga_id))["data"]["outputs"] == ["one"]


async def test_a_redelivered_reply_to_a_group_mode_saga_is_applied_once(h: Harness) -> None:
    saga_id = await h.start("grouped")
    first = h.command()
    reply = done(first, "one")
    env = await h.answer(first, reply)

    await h.deliver(reply, env)
    assert len(h.commands()) == 3, "the two calls after the first are sent once"
    assert (await h.instance(saga_id))["data"]["outputs"] == ["one"]


async def test_a_group_commit_updates_only_the_columns_its_transitions_set(h: Harness) -> None:
    updates: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE saga_instances"):
            updates.append(statement)

    event.listen(SyncEngine, "before_cursor_execute", record)
    try:
        saga_id = await h.start("grouped", {"note": "x" * 10_000})
        await h.answer(h.command(), done(h.command(), 1))
    finally:
        event.remove(SyncEngine, "before_cursor_execute", record)

    assert updates, "the reply was committed as an update of the stored instance"
    assert all(" input=" not in u and " type=" not in u for u in updates), updates
    row = await h.instance(saga_id)
    assert row["input"] == {"note": "x" * 10_000} and row["data"]["outputs"] == [1]


async def test_a_group_mode_saga_replies_before_it_finishes(h: Harness) -> None:
    saga_id = await h.start("grouped")
    await h.answer(h.command(), done(h.command(), 1))
    second, third = h.commands()[1:]
    await h.answer(third, done(third, 3))  # the answers to a CallAll may come in any order
    await h.answer(second, done(second, 2))

    assert [r.result for r in h.events(SagaReplied)] == [{"outputs": [1, 2, 3]}]
    assert h.events(SagaFinished) == []
    await h.answer(h.command(), done(h.command(), 4))
    assert (await h.instance(saga_id))["result"] == {"outputs": [1, 2, 3, 4]}


async def test_group_mode_commands_carry_ids_a_replay_of_their_trigger_sends_again(
    h: Harness, tmp_path: Path
) -> None:
    saga_id = await h.start("grouped")
    first = h.command()
    assert first.id == f"{saga_id}.1.1.0.1.g", "<saga>.<run>.<seq>.<n>.<attempt>, group marked"
    reply = done(first, "one")
    env = h.reply_to(first, reply)

    # The reply is applied and its commands published, but the runner dies before the group
    # commit that would store the transition.
    applying = asyncio.ensure_future(h.engine.reply(reply, env))
    while saga_id not in h.engine.store.pending:
        await asyncio.sleep(0.001)
    h.engine.store.pending.clear()
    applying.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await applying
    published = [c.id for c in h.commands()[1:]]
    assert len(published) == 2

    # Its message is redelivered to another runner, which replays it on the stored state.
    after = Harness.on(h.db, [*ALL], clock=h.clock)
    await after.deliver(reply, env)
    assert [c.id for c in after.commands()] == published
    assert (await after.instance(saga_id))["data"]["outputs"] == ["one"]


async def test_a_group_mode_calls_timeout_waits_the_replay_grace_as_well(h: Harness) -> None:
    saga_id = await h.start("grouped")  # its first call: timeout=30; the harness's grace: 60
    sent_at = h.clock()

    await h.at(sent_at + 89.999)
    assert [e["event"] for e in await h.history(saga_id)].count("timed_out") == 0
    await h.at(sent_at + 90)
    assert [e["event"] for e in await h.history(saga_id)].count("timed_out") == 1
    await h.advance(1)
    assert [c.attempt for c in h.commands()] == [1, 2]


async def test_a_parent_goes_on_with_its_childs_outcome(h: Harness) -> None:
    parent_id = await h.start("parent")
    child_id = (await h.instance(parent_id))["waiting"]["child_id"]

    for n in (1, 2):
        command = h.command()
        assert command.message.call_id == f"{child_id}:{n}", "the child does the work"
        await h.answer(command, done(command, n))

    row = await h.instance(parent_id)
    assert row["state"] == "completed", row
    assert row["result"] == {"child_state": "completed", "child_result": {"outputs": [1, 2]}}


async def test_a_chat_turn_runs_to_its_answer_below_the_bus(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path, shipped.ALL)
    turn = ChatTurnInput(model="m-1", messages=[ChatMessage(role="user", content="hi")])
    saga_id = await h.start("chat_turn", msgspec.to_builtins(turn))
    try:
        check, recall = h.commands()
        await h.answer(check, PolicyEvaluated(decision_id="p", decision="allow", stage="prompt"))
        await h.answer(recall, MemoryRecalled(items=[]))
        answer = ChatMessage(role="assistant", content="hello")
        await h.answer(h.command(), SlmCompleted(model="m-1", provider="fake", message=answer))
        await h.answer(
            h.command(), PolicyEvaluated(decision_id="a", decision="allow", stage="answer")
        )
        replied = [msgspec.convert(r.result, ChatTurnResult) for r in h.events(SagaReplied)]
        assert [(r.message.content, r.finish_reason) for r in replied] == [("hello", "stop")]
        assert h.events(SagaFinished) == [], "the memory write comes after the answer"
        await h.answer(h.command(), MemoryStored(turn_id=saga_id))

        assert [c.envelope.schema for c in h.commands()] == [
            "policy.evaluate",
            "memory.recall",
            "slm.complete",
            "policy.evaluate",
            "memory.store",
        ]
        assert [e.state for e in h.events(SagaFinished)] == ["completed"]
        assert (await h.instance(saga_id))["result"]["finish_reason"] == "stop"
    finally:
        await h.close()
