"""An operator's terminate and retry, below the bus (tests/sagas/harness.py): what each does to
an instance, its children and what it sends, and what each refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bus.errors import Conflict
from sagas import tables
from sagas.definition import Call, CallAll, Complete, Definition, Retry, Run, WaitSignal
from sagas.operations import RESUME
from schemas.common import FailureCode
from schemas.sagas import SagaFinished, SagaTerminate
from schemas.tools import ToolInvoke, ToolResult
from tests.sagas.definitions import ALL, tool
from tests.sagas.harness import Harness, Sent

Data = dict[str, Any]


@dataclass
class Bug:
    """A bug in a step that a deploy fixes while its saga stays failed."""

    fixed: bool = False


bug = Bug()

# A step that changes its data, then raises until its bug is fixed.
mending: Definition[Data] = Definition("mending", version=1, input_type=dict)


@mending.start
def fetch(run: Run[Data]) -> Call:
    return Call(tool(run, 1), then=use, timeout=30)


@mending.step
def use(run: Run[Data], result: ToolResult) -> Call:
    run.data["seen"] = [*run.data.get("seen", []), result.output]
    if not bug.fixed:
        raise RuntimeError("use() mishandles the result")
    return Call(tool(run, 2), then=finish, timeout=30)


@mending.step
def finish(run: Run[Data], result: ToolResult) -> Complete:
    return Complete({"seen": run.data["seen"]})


# Two calls at once; the second is tried once only.
pair: Definition[Data] = Definition("pair", version=1, input_type=dict)


@pair.start
def both(run: Run[Data]) -> CallAll:
    return CallAll(
        [
            Call(tool(run, 1), then=joined, timeout=30),
            Call(tool(run, 2), then=joined, timeout=30, retry=Retry(max_attempts=1)),
        ],
        then=joined,
    )


@pair.step
def joined(run: Run[Data], results: list[ToolResult]) -> Complete:
    return Complete({"outputs": [r.output for r in results]})


# A signal wait that fails the saga when it times out.
gated: Definition[Data] = Definition("gated", version=1, input_type=dict)


@gated.start
def wait_gate(run: Run[Data]) -> WaitSignal:
    return WaitSignal("go", then=through, timeout=600)


@gated.step
def through(run: Run[Data], payload: Data) -> Complete:
    return Complete({"by": payload.get("by")})


@pytest.fixture(autouse=True)
def unfixed() -> Iterator[None]:
    bug.fixed = False
    yield
    bug.fixed = False


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path, [*ALL, mending, pair, gated])
    yield harness
    await harness.close()


def done(command: Sent, output: Any = None) -> ToolResult:
    invoke: ToolInvoke = command.message
    return ToolResult(call_id=invoke.call_id, name=invoke.name, ok=True, output=output)


async def events(h: Harness, saga_id: str) -> list[str]:
    return [e["event"] for e in await h.history(saga_id)]


# ── terminate ───────────────────────────────────────────────────────────────────────────


async def test_terminate_ends_a_running_saga_at_once_without_compensating(h: Harness) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command()))  # draft done: its undo is registered
    sent_before = len(h.commands())

    await h.terminate(saga_id, "runaway")

    row = await h.instance(saga_id)
    assert (row["state"], row["error"]) == ("terminated", "terminated: runaway")
    assert row["waiting"] is None and row["wake_at"] is None
    assert len(h.commands()) == sent_before, "no compensation is sent"
    assert [(e.state, e.error) for e in h.events(SagaFinished)] == [
        ("terminated", "terminated: runaway")
    ]
    assert (await events(h, saga_id))[-2:] == ["terminate_requested", "terminated"]


async def test_a_reply_to_a_terminated_sagas_call_is_dropped(h: Harness) -> None:
    saga_id = await h.start("three_steps")
    in_flight = h.command()
    await h.terminate(saga_id)

    await h.answer(in_flight, done(in_flight, "late"))

    row = await h.instance(saga_id)
    assert row["state"] == "terminated"
    assert len(h.commands()) == 1, "the next step never ran"


async def test_terminate_stops_the_compensations_of_a_cancelling_saga(h: Harness) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command()))
    await h.answer(h.command(), done(h.command()))
    await h.cancel(saga_id)
    undo = h.command()
    assert undo.message.name == "undo" and (await h.instance(saga_id))["state"] == "cancelling"

    await h.terminate(saga_id)
    await h.answer(undo, done(undo))

    assert (await h.instance(saga_id))["state"] == "terminated"
    assert [c.message.name for c in h.commands()].count("undo") == 1, "no further undo is sent"


async def test_terminating_an_ended_saga_is_a_conflict_naming_its_state(h: Harness) -> None:
    saga_id = await h.start("refused")
    await h.fail(h.command(), FailureCode.FORBIDDEN)

    with pytest.raises(Conflict, match=r"has already ended \(failed\)"):
        await h.terminate(saga_id)
    assert (await h.instance(saga_id))["state"] == "failed"


async def test_a_terminated_parent_terminates_its_running_children(h: Harness) -> None:
    parent_id = await h.start("parent")
    child_id = (await h.instance(parent_id))["waiting"]["child_id"]

    await h.terminate(parent_id, "stop all", message_id="op-1")
    (order,) = h.commands(SagaTerminate)
    assert order.message == SagaTerminate(saga_id=child_id, reason="stop all")
    assert order.envelope.causation_id == "op-1"
    await h.terminate(order.message.saga_id, order.message.reason, message_id=order.id)

    assert (await h.instance(parent_id))["state"] == "terminated"
    child = await h.instance(child_id)
    assert (child["state"], child["error"]) == ("terminated", "terminated: stop all")


async def test_a_parent_goes_on_when_its_child_is_terminated(h: Harness) -> None:
    parent_id = await h.start("parent")
    child_id = (await h.instance(parent_id))["waiting"]["child_id"]

    await h.terminate(child_id)

    row = await h.instance(parent_id)
    assert row["state"] == "completed", row
    assert row["result"]["child_state"] == "terminated"


async def test_a_group_mode_saga_can_be_terminated(h: Harness) -> None:
    saga_id = await h.start("grouped")
    await h.terminate(saga_id)
    assert (await h.instance(saga_id))["state"] == "terminated"
    assert [e.state for e in h.events(SagaFinished)] == ["terminated"]


# ── retry ───────────────────────────────────────────────────────────────────────────────


async def test_retry_sends_a_refused_call_again_as_a_first_attempt(h: Harness) -> None:
    saga_id = await h.start("refused")
    refused = h.command()
    await h.fail(refused, FailureCode.FORBIDDEN, error="not granted yet")

    retried = await h.retry(saga_id, "granted now")

    assert (retried.run, retried.step) == (2, "refused_call")
    again = h.command()
    assert again.message == refused.message and again.id != refused.id
    assert again.attempt == 1
    row = await h.instance(saga_id)
    assert (row["state"], row["error"], row["error_code"], row["run"]) == ("running", None, None, 2)
    assert "retried" in await events(h, saga_id)

    await h.answer(again, done(again))
    assert (await h.instance(saga_id))["state"] == "completed"
    assert [e.state for e in h.events(SagaFinished)] == ["failed", "completed"]


async def test_a_retried_call_has_all_its_attempts_again(h: Harness) -> None:
    saga_id = await h.start("retrying", {"max_attempts": 2, "fail_times": 9})
    for _ in range(2):
        await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)
        await h.advance(60)
    assert (await h.instance(saga_id))["state"] == "failed"

    await h.retry(saga_id)
    await h.fail(h.command(), FailureCode.UNAVAILABLE, retryable=True)

    assert (await h.instance(saga_id))["state"] == "running", "its first attempt of two failed"
    await h.advance(60)
    assert [c.attempt for c in h.commands()] == [1, 2, 1, 2]


async def test_retry_runs_a_step_that_raised_again_on_the_data_and_reply_it_had(
    h: Harness,
) -> None:
    saga_id = await h.start("mending")
    await h.answer(h.command(), done(h.command(), "fetched"))
    row = await h.instance(saga_id)
    assert row["state"] == "failed" and "use() mishandles" in row["error"]

    bug.fixed = True
    retried = await h.retry(saga_id)

    assert retried.step == "use"
    await h.answer(h.command(), done(h.command()))
    row = await h.instance(saga_id)
    assert row["state"] == "completed", row
    assert row["result"] == {"seen": ["fetched"]}, "the step ran on its data before it raised"
    assert len(h.commands()) == 2, "the call before the failed step is not sent again"


async def test_a_retried_step_that_raises_again_fails_again_and_can_be_retried(
    h: Harness,
) -> None:
    saga_id = await h.start("mending")
    await h.answer(h.command(), done(h.command(), "fetched"))
    await h.retry(saga_id)
    assert (await h.instance(saga_id))["state"] == "failed"

    bug.fixed = True
    await h.retry(saga_id)
    await h.answer(h.command(), done(h.command()))
    row = await h.instance(saga_id)
    assert (row["state"], row["run"], row["result"]) == ("completed", 3, {"seen": ["fetched"]})


async def test_retry_of_calls_sent_together_sends_only_those_without_a_reply(
    h: Harness,
) -> None:
    saga_id = await h.start("pair")
    first, second = h.commands()
    await h.answer(first, done(first, "one"))
    await h.fail(second, FailureCode.UNAVAILABLE, retryable=True)
    assert (await h.instance(saga_id))["state"] == "failed"

    await h.retry(saga_id)

    again = h.command()
    assert len(h.commands()) == 3 and again.message == second.message
    await h.answer(again, done(again, "two"))
    row = await h.instance(saga_id)
    assert (row["state"], row["result"]) == ("completed", {"outputs": ["one", "two"]})


async def test_retry_of_a_timed_out_signal_wait_waits_for_the_signal_again(h: Harness) -> None:
    saga_id = await h.start("gated")
    await h.advance(600)
    assert (await h.instance(saga_id))["state"] == "failed"

    await h.retry(saga_id)

    row = await h.instance(saga_id)
    assert row["state"] == "running"
    assert row["wake_at"] == h.clock() + 600, "its timeout counts from the retry"
    await h.signal(saga_id, "go", {"by": "alice"})
    assert (await h.instance(saga_id))["result"] == {"by": "alice"}


async def test_retry_of_a_saga_that_has_not_failed_is_a_conflict_naming_its_state(
    h: Harness,
) -> None:
    saga_id = await h.start("three_steps")
    with pytest.raises(Conflict, match="is running, not failed"):
        await h.retry(saga_id)
    await h.terminate(saga_id)
    with pytest.raises(Conflict, match="is terminated, not failed"):
        await h.retry(saga_id)


async def test_retry_of_a_compensated_saga_is_refused_because_its_steps_were_undone(
    h: Harness,
) -> None:
    saga_id = await h.start("approval")
    await h.answer(h.command(), done(h.command()))
    await h.answer(h.command(), done(h.command()))
    await h.cancel(saga_id)
    for _ in range(2):
        await h.answer(h.command(), done(h.command()))
    assert (await h.instance(saga_id))["state"] == "compensated"

    with pytest.raises(Conflict, match="compensations have already run"):
        await h.retry(saga_id)


async def test_retry_of_a_group_mode_saga_is_refused(h: Harness) -> None:
    saga_id = await h.start("grouped")
    await h.fail(h.command(), FailureCode.FORBIDDEN)
    assert (await h.instance(saga_id))["state"] == "failed"

    with pytest.raises(Conflict, match="group durability"):
        await h.retry(saga_id)


async def test_retry_of_a_saga_that_failed_with_no_resume_point_is_refused(h: Harness) -> None:
    saga_id = await h.start("refused")
    await h.fail(h.command(), FailureCode.FORBIDDEN)
    row = await h.instance(saga_id)
    async with h.db.begin() as conn:  # as an instance that failed before retry existed
        data = {k: v for k, v in row["data"].items() if k != RESUME}
        await conn.execute(update(tables.instances).values(data=data))

    with pytest.raises(Conflict, match="failed where a retry cannot take it up again"):
        await h.retry(saga_id)
