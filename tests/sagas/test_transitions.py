"""Transitions as plain functions: an instance, a trigger and the time in, one ``Change`` out.

No database, no bus, no clock: each test builds an instance, applies a trigger to it, and reads
the decision (the new state, what it sends, what it records). The engine's own tests
(test_engine_below_the_bus.py) prove that the engine persists and publishes such decisions.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bus.consume import reply_id
from sagas.change import Change, Instance, Outgoing
from sagas.definition import Call, Complete, Definition, Retry, Run
from sagas.registry import Registry
from sagas.transitions import (
    Rules,
    new_instance,
    on_cancel,
    on_reply,
    on_retry,
    on_signal,
    on_start,
    on_terminate,
    on_timer,
    waits_on,
)
from schemas.catalogue import by_name, failed_event, of_type
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import Envelope
from schemas.sagas import Part, SagaFinished, SagaState, SagaTerminate, Waiting
from schemas.tools import ToolInvoke, ToolResult
from tests.sagas.definitions import ALL, approval, retrying, three_steps, tool, undone_fan_out

NOW = 1_800_000_000.0
Data = dict[str, Any]

# One call whose attempts may take longer than its schedule-to-close deadline allows.
bounded: Definition[Data] = Definition("bounded", version=1, input_type=dict)


@bounded.start
def bounded_call(run: Run[Data]) -> Call:
    return Call(
        tool(run, 1),
        then=bounded_done,
        timeout=10,
        schedule_to_close=5,
        retry=Retry(initial=1.0),
    )


@bounded.step
def bounded_done(run: Run[Data], result: ToolResult) -> Complete:
    return Complete({})


REGISTRY = Registry([*ALL, bounded])


def rules(definition: Definition[Any]) -> Rules:
    return Rules(definition, REGISTRY.latest)


def started(definition: Definition[Any], saga_id: str = "s1", **input: Any) -> Instance:
    """An instance of ``definition`` after its first transition, as it is stored."""
    env = Envelope(message_id="start-1", correlation_id=saga_id, tenant="acme", schema="x")
    row = new_instance(definition, saga_id, input, env, NOW)
    return stored(on_start(rules(definition), row, env.message_id, NOW))


def stored(change: Change) -> Instance:
    """The instance as the engine loads it for the next transition: numbered on."""
    return msgspec.structs.replace(change.row, seq=change.row.seq + 1)


def commands(change: Change) -> list[Any]:
    return [decoded(o) for o in change.outbox if by_name(header(o, "schema")).kind == "cmd"]


def events(change: Change) -> list[Any]:
    return [decoded(o) for o in change.outbox if by_name(header(o, "schema")).kind == "evt"]


def header(sent: Outgoing, name: str) -> str:
    return getattr(Envelope.from_headers(sent.headers), name)  # type: ignore[no-any-return]


def decoded(sent: Outgoing) -> Any:
    return by_name(header(sent, "schema")).decode(sent.body)


def answer(row: Instance, event: msgspec.Struct, at: float) -> Change:
    """Apply the reply ``event`` to the call ``row`` waits on, as the handler runtime sends it."""
    assert row.waiting is not None
    command_id = row.waiting["message_id"]
    if isinstance(event, CommandFailed):
        schema = failed_event(by_name(row.waiting["command"]["schema"]).service).name
        message_id = reply_id(command_id, "failed")
    else:
        schema, message_id = of_type(type(event)).name, reply_id(command_id)
    env = Envelope(
        message_id=message_id,
        correlation_id=row.correlation_id,
        causation_id=command_id,
        tenant=row.tenant,
        schema=schema,
    )
    index = waits_on(row.waiting, command_id)
    assert index is not None
    return on_reply(rules(REGISTRY.get(row.type, row.version)), row, index, event, env, at)


def test_a_reply_to_the_awaited_call_runs_the_next_step_and_sends_its_call() -> None:
    row = started(three_steps)

    change = answer(row, ToolResult(call_id="s1:1", name="effect", ok=True, output="one"), NOW + 1)

    assert change.row.step == "second"
    assert change.row.data == {"outputs": ["one"]}
    assert [c.call_id for c in commands(change)] == ["s1:2"]
    assert change.row.waiting is not None
    assert change.row.waiting["kind"] == Waiting.CALL
    assert change.row.wake_at == NOW + 1 + 30  # the new call's start-to-close timeout
    assert [h.event for h in change.history] == ["reply", "step", "command_sent"]


def test_a_retryable_failure_with_attempts_left_schedules_a_retry_after_the_backoff() -> None:
    row = started(retrying)
    failure = CommandFailed(command="tools.invoke", error="flaky", retryable=True)

    change = answer(row, failure, NOW + 1)

    assert change.row.waiting is not None
    assert change.row.waiting["kind"] == Waiting.RETRY
    assert change.row.wake_at == pytest.approx(NOW + 1 + 0.2)  # Retry(initial=0.2)
    assert commands(change) == []  # nothing is sent until the backoff has passed
    assert change.row.state == SagaState.RUNNING


def test_the_retry_timer_sends_the_command_again_as_its_next_attempt() -> None:
    row = stored(
        answer(
            started(retrying), CommandFailed(command="tools.invoke", error="x", retryable=True), NOW
        )
    )

    change = on_timer(rules(retrying), row, NOW + 0.2)

    assert change is not None
    assert [c.call_id for c in commands(change)] == ["s1:1"]
    assert change.outbox[0].id.endswith(".2")  # <saga>.<run>.<seq>.<n>.<attempt>
    assert change.row.waiting is not None and change.row.waiting["attempt"] == 2


def test_a_timer_before_the_instance_is_due_decides_nothing() -> None:
    row = started(three_steps)

    assert on_timer(rules(three_steps), row, NOW + 29) is None


def test_a_call_timing_out_past_its_deadline_fails_the_saga() -> None:
    row = started(bounded)  # start-to-close 10 s, schedule-to-close 5 s

    change = on_timer(rules(bounded), row, NOW + 10)

    assert change is not None
    assert change.row.state == SagaState.FAILED
    assert change.row.error == "tools.invoke failed: timeout: no reply within start-to-close"
    assert change.row.waiting is None and change.row.wake_at is None
    [finished] = events(change)
    assert isinstance(finished, SagaFinished) and finished.state == SagaState.FAILED
    assert [h.event for h in change.history] == ["timed_out", "failed"]


def test_a_refusal_fails_the_saga_with_its_code_at_once() -> None:
    row = started(retrying)
    refusal = CommandFailed(
        command="tools.invoke", error="no", retryable=False, code=FailureCode.FORBIDDEN
    )

    change = answer(row, refusal, NOW + 1)

    assert change.row.state == SagaState.FAILED
    assert change.row.error_code == FailureCode.FORBIDDEN


def test_a_cancel_while_a_call_with_an_undo_is_in_flight_waits_for_its_answer() -> None:
    row = started(approval)  # its first call, the draft, has an undo

    change = on_cancel(rules(approval), row, "changed my mind", "cancel-1", NOW + 1)

    assert change.row.state == SagaState.CANCELLING
    assert change.row.error == "cancelled: changed my mind"
    assert commands(change) == []  # an undo sent now could overtake the call at its handler
    assert change.row.waiting == {**(row.waiting or {}), "cancelled_in_flight": True}
    assert change.row.wake_at == row.wake_at  # the call's own deadline still holds
    assert events(change) == []


def test_a_cancel_during_a_fan_out_waits_for_its_calls_with_an_undo_and_not_the_others() -> None:
    row = started(undone_fan_out)  # left and right have an undo, the lookup has none

    change = on_cancel(rules(undone_fan_out), row, "", "cancel-1", NOW + 1)

    assert change.row.state == SagaState.CANCELLING
    assert commands(change) == []
    assert change.row.waiting is not None and change.row.waiting["cancelled_in_flight"]
    kinds = [c["kind"] for c in change.row.waiting["calls"]]
    assert kinds == [Part.CALL, Part.CALL, Part.DONE]
    assert change.row.wake_at == row.wake_at  # the calls' own deadlines still hold
    lookup = change.row.waiting["calls"][2]["message_id"]
    assert waits_on(change.row.waiting, lookup) is None  # its reply will be dropped as late


def test_the_answer_of_a_call_in_flight_at_a_cancel_sends_its_undo_first() -> None:
    cancelling = stored(on_cancel(rules(approval), started(approval), "", "cancel-1", NOW + 1))

    change = answer(cancelling, ToolResult(call_id="x", name="draft", ok=True), NOW + 2)

    [undo] = commands(change)
    assert isinstance(undo, ToolInvoke)
    assert (undo.name, undo.arguments) == ("undo", {"label": "draft"})
    assert change.row.state == SagaState.CANCELLING
    assert change.row.step == cancelling.step  # the next step does not run
    assert change.row.data["_compensations"] == []  # the one registered is under way


@pytest.mark.parametrize("retryable", [True, False])
def test_a_call_in_flight_at_a_cancel_that_fails_is_undone_all_the_same_and_not_retried(
    retryable: bool,
) -> None:
    cancelling = stored(on_cancel(rules(approval), started(approval), "", "cancel-1", NOW + 1))
    failure = CommandFailed(command="tools.invoke", error="slow", retryable=retryable)

    change = answer(cancelling, failure, NOW + 2)

    [undo] = commands(change)  # a failure may be a timeout of a call that took effect
    assert (undo.name, undo.arguments) == ("undo", {"label": "draft"})
    assert change.row.state == SagaState.CANCELLING


def test_a_cancel_with_nothing_to_undo_ends_the_saga_cancelled() -> None:
    row = started(three_steps)

    change = on_cancel(rules(three_steps), row, "", "cancel-1", NOW + 1)

    assert change.row.state == SagaState.CANCELLED
    assert change.row.error == "cancelled"
    [finished] = events(change)
    assert finished.state == SagaState.CANCELLED


def test_a_terminate_ends_the_saga_at_once_undoing_nothing_and_terminates_its_children() -> None:
    row = started(approval)  # its call in flight has an undo, which a terminate does not run

    change = on_terminate(rules(approval), row, "stuck", ["s1.child2"], "terminate-1", NOW + 1)

    assert change.row.state == SagaState.TERMINATED
    assert change.row.error == "terminated: stuck"
    assert commands(change) == [SagaTerminate(saga_id="s1.child2", reason="stuck")]
    [finished] = events(change)
    assert finished.state == SagaState.TERMINATED


def test_a_retry_sends_the_call_that_failed_for_good_again_as_a_first_attempt() -> None:
    refusal = CommandFailed(command="tools.invoke", error="no", retryable=False)
    failed = stored(answer(started(retrying), refusal, NOW))
    assert failed.state == SagaState.FAILED

    retried = on_retry(rules(retrying), failed, "fixed", "retry-1", NOW + 60)
    resent = on_timer(rules(retrying), stored(retried), NOW + 60)

    assert (retried.row.state, retried.row.run) == (SagaState.RUNNING, 2)
    assert retried.wake_now == ["s1"]  # due at once
    assert resent is not None
    [command] = resent.outbox
    assert command.id.startswith("s1.2.") and command.id.endswith(".1")  # run 2, attempt 1


def test_a_signal_nobody_waits_for_yet_is_kept_for_later() -> None:
    row = started(approval)

    change = on_signal(rules(approval), row, "approve", {"by": "ann"}, "signal-1", NOW + 1)

    assert change.row.data["_signals"] == [{"name": "approve", "payload": {"by": "ann"}}]
    assert change.row.waiting == row.waiting  # still waits on its call
    assert change.written == {"data"}


def test_the_same_trigger_on_the_same_instance_decides_the_same_change() -> None:
    row = started(three_steps)
    reply = ToolResult(call_id="s1:1", name="effect", ok=True, output="one")

    first, again = answer(row, reply, NOW + 1), answer(row, reply, NOW + 1)

    assert [o.id for o in first.outbox] == [o.id for o in again.outbox]
    assert first.history == again.history
    assert first.row == again.row
