"""Transitions: what a saga instance does on each trigger, as plain functions.

Each entry point here (``on_start``, ``on_reply``, ``on_signal``, ``on_cancel``,
``on_terminate``, ``on_retry``, ``on_child_finished``, ``on_timer``) takes the rules it runs
under (the definition), the ``Instance`` as stored, its trigger and ``now``, and returns one
``Change`` (sagas/change.py): the new state, the history, the commands and events to send, the
children to start. Nothing here reads or writes a database or the bus, nor reads the clock; the
engine (sagas/engine.py) loads, calls one of these, and persists and publishes what it returns.
Applying the same trigger to the same stored instance therefore decides the same change, message
ids included, which is what recovery rests on (sagas/RECOVERY.md).

Inside a transition the helpers below build one ``Change`` up: each reads the state as the
transition has left it so far (``change.row``), never the state it started from.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from bus import tracing
from bus.publish import encode
from sagas import operations
from sagas.change import Change, Entry, Instance, Outgoing
from sagas.definition import (
    Action,
    Call,
    CallAll,
    Complete,
    Continue,
    Definition,
    Fail,
    Reply,
    Retry,
    Run,
    Sleep,
    StartChild,
    StartChildren,
    WaitSignal,
    step_name,
)
from schemas.catalogue import by_name, of_type
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import GROUP_MARK, Envelope
from schemas.sagas import (
    Part,
    SagaCancel,
    SagaFinished,
    SagaReplied,
    SagaState,
    SagaTerminate,
    Waiting,
)

log = logging.getLogger("soma.sagas")

_COMPENSATED = "__compensated__"
# Set in ``waiting`` when a cancel found work with an undo under way (a call in flight, calls of a
# fan-out, running children): its answer or end (the last of them) runs the compensations
# instead of the next step.
CANCELLED_IN_FLIGHT = "cancelled_in_flight"
# A child that ended so left its effects in place: its ``compensate`` is then the parent's to run.
_LEFT_EFFECTS = frozenset({SagaState.COMPLETED, SagaState.FAILED, SagaState.TERMINATED})
# A Continue is carried on by the process that committed it at once; the timer pass takes it
# over only when it is still pending this long after (its process died).
CONTINUE_GRACE = 1.0
_COMPENSATION_RETRY = Retry(initial=1.0, max_attempts=5)
# Steps a group mode transition runs one after another before it checkpoints (a loop of
# Continues still yields to the timer pass now and then).
MAX_INLINE = 32


@dataclass(frozen=True)
class Rules:
    """What a transition runs under besides the instance and its trigger."""

    definition: Definition[Any]  # the instance's own: its type and version
    # The latest definition of a saga type: for the children a step starts.
    latest: Callable[[str], Definition[Any]]
    # How much longer than its timeout a group mode call is waited for: long enough for the
    # replay of an event its lost transition consumed (RECOVERY.md). Step mode waits no longer.
    replay_grace: float = 60.0

    @property
    def grace(self) -> float:
        return self.replay_grace if self.definition.durability == "group" else 0.0


# ── entry points ─────────────────────────────────────────────────────────────────────────


def new_instance(
    definition: Definition[Any],
    saga_id: str,
    raw_input: dict[str, Any],
    env: Envelope,
    now: float,
    *,
    run_no: int = 1,
    parent_id: str | None = None,
) -> Instance:
    """A new instance of ``definition``, before its first step, started by ``env``."""
    return Instance(
        id=saga_id,
        type=definition.saga_type,
        version=definition.version,
        run=run_no,
        tenant=env.tenant,
        correlation_id=env.correlation_id,
        actor=env.actor,
        parent_id=parent_id,
        state=SagaState.RUNNING,
        step=None,
        input=raw_input,
        data={},
        waiting=None,
        wake_at=None,
        result=None,
        error=None,
        error_code=None,
        seq=1,
        rev=0,
        created_at=now,
        updated_at=now,
        finished_at=None,
    )


def on_start(rules: Rules, row: Instance, cause: str, now: float) -> Change:
    """A new instance (``new_instance``) runs its first step."""
    change = Change(row)
    _history(change, None, "started", {"input": row.input}, now)
    _run_step(rules, change, rules.definition.first or "", None, cause, now)
    return change


def on_reply(
    rules: Rules, row: Instance, index: int, event: Any, env: Envelope, now: float
) -> Change:
    """The reply ``event`` (a ``CommandFailed`` when it failed) to the call the instance waits
    on: ``index`` is which call (``waits_on``), 0 for a lone one."""
    assert row.waiting is not None
    if row.waiting["kind"] == Waiting.ALL:
        return _on_reply_all(rules, row, index, event, env, now)
    return _on_reply(rules, row, event, env, now)


def on_signal(
    rules: Rules, row: Instance, name: str, payload: dict[str, Any], cause: str, now: float
) -> Change:
    """A signal: the step waiting for it runs, or it is kept for a later ``WaitSignal``."""
    change = Change(row)
    waiting = row.waiting or {}
    _history(change, row.step, "signal", {"name": name, "payload": payload}, now)
    if waiting.get("kind") == Waiting.SIGNAL and waiting.get("name") == name:
        _run_step(rules, change, waiting["then"], payload, cause, now)
    else:
        data = dict(row.data)
        data["_signals"] = [*data.get("_signals", []), {"name": name, "payload": payload}]
        change.set(data=data)
    return change


def on_cancel(rules: Rules, row: Instance, reason: str, cause: str, now: float) -> Change:
    """A cancel of a running instance: its children are cancelled, and its compensations run,
    newest first (the undo of a call still in flight among them), before it ends."""
    change = Change(row)
    _history(change, row.step, "cancel_requested", {"reason": reason}, now)
    error = f"cancelled: {reason}" if reason else "cancelled"
    waiting = row.waiting or {}
    if waiting.get("kind") == Waiting.CHILD:
        _send(rules, change, SagaCancel(saga_id=waiting["child_id"], reason=reason), cause, now)
        if waiting.get("compensate"):
            # The child may go on (and complete) before its cancel reaches it, so its undo sent
            # now could come before what it undoes: the instance waits for the child's end, and
            # undoes it first if it ended with its effects in place.
            change.set(
                state=SagaState.CANCELLING,
                error=error,
                waiting={**waiting, CANCELLED_IN_FLIGHT: True},
            )
            return change
    elif waiting.get("kind") == Waiting.CHILDREN:
        running = [c for c in waiting["children"] if c.get("outcome") is None]
        for child in running:
            _send(rules, change, SagaCancel(saga_id=child["child_id"], reason=reason), cause, now)
        if _awaited(waiting["children"]):
            # As for one child: those with an undo are waited for; see ``_awaited``.
            change.set(
                state=SagaState.CANCELLING,
                error=error,
                waiting={**waiting, CANCELLED_IN_FLIGHT: True},
            )
            return change
    elif waiting.get("kind") == Waiting.CALL and waiting.get("compensate"):
        # The call is out and may still take effect. Its undo sent now could reach the
        # handler first and undo nothing, so the instance waits for the call's answer (or
        # its deadline) and then undoes it first; see ``_cancelled_call_answered``.
        change.set(
            state=SagaState.CANCELLING, error=error, waiting={**waiting, CANCELLED_IN_FLIGHT: True}
        )
        return change
    elif waiting.get("kind") == Waiting.RETRY and waiting.get("compensate"):
        # An attempt that failed may still have taken effect: its undo runs first, as an
        # undo of what never happened must be harmless anyway.
        _compensate_later(change, waiting["compensate"])
    elif waiting.get("kind") == Waiting.ALL and _cancel_all(rules, change, waiting):
        # Calls of the fan-out with an undo are out: as for a lone call, the instance waits
        # for each one's answer (or deadline); see ``_cancelled_part_answered``.
        change.set(state=SagaState.CANCELLING, error=error)
        return change
    change.set(state=SagaState.CANCELLING, error=error)
    _next_compensation(rules, change, cause, now)
    return change


def on_terminate(
    rules: Rules, row: Instance, reason: str, children: list[str], cause: str, now: float
) -> Change:
    """End a running or cancelling instance at once: no compensation runs, what it waits for
    is dropped, and its running ``children`` (their ids) are sent a terminate of their own."""
    change = Change(row)
    _history(change, row.step, "terminate_requested", {"reason": reason}, now)
    for child_id in children:
        _command(
            rules, change, SagaTerminate(saga_id=child_id, reason=reason), cause, now, attempt=1
        )
    error = operations.terminated_error(reason)
    _finish(change, SagaState.TERMINATED, None, error, cause, now)
    return change


def on_retry(rules: Rules, row: Instance, reason: str, cause: str, now: float) -> Change:
    """Run a failed instance again from where it failed (its resume point, see
    sagas/operations.py), as its next run: the failed call is sent again as a first attempt,
    the failed step runs again on the data it was given. The engine has checked that it may
    (``operations.why_not_retryable``)."""
    point = row.data[operations.RESUME]
    data = {k: v for k, v in row.data.items() if k != operations.RESUME}
    change = Change(row)
    change.set(
        run=row.run + 1,
        state=SagaState.RUNNING,
        result=None,
        error=None,
        error_code=None,
        finished_at=None,
        data=data,
    )
    detail = {"reason": reason, "from_run": row.run}
    _history(change, point["step"], "retried", detail, now)
    if "waiting" in point:
        waiting, wake_at = operations.resumed_waiting(point, now)
        change.set(step=point["step"], waiting=waiting, wake_at=wake_at)
        if wake_at == now:
            change.wake_now.append(row.id)
    else:
        change.set(data={k: v for k, v in point["data"].items() if k != operations.RESUME})
        reply = operations.decode_reply(point["reply"])
        _run_step(rules, change, point["step"], reply, cause, now)
    return change


def on_child_finished(
    rules: Rules, row: Instance, event: SagaFinished, cause: str, now: float
) -> Change | None:
    """A child saga ended; None when the instance does not wait for it."""
    waiting = row.waiting or {}
    if waiting.get("kind") == Waiting.CHILDREN:
        return _child_of_many_finished(rules, row, waiting, event, cause, now)
    if waiting.get("kind") != Waiting.CHILD or waiting.get("child_id") != event.saga_id:
        return None
    change = Change(row)
    if event.state in _LEFT_EFFECTS and waiting.get("compensate"):
        _compensate_later(change, waiting["compensate"])
    if waiting.get(CANCELLED_IN_FLIGHT):
        detail = {"child_id": event.saga_id, "state": event.state}
        _history(change, row.step, "child_finished", detail, now)
        _next_compensation(rules, change, cause, now)
        return change
    _run_step(rules, change, waiting["then"], event, cause, now)
    return change


def on_timer(rules: Rules, row: Instance, now: float, *, continuing: bool = False) -> Change | None:
    """Whatever timer of the instance is due: a sleep, a timeout, a retry, a continue. None
    when none is (another pass fired it, or it moved).

    ``continuing``: the process that committed a ``Continue`` goes straight on with it; the
    timer pass only picks such a step up after a grace period, if that process died."""
    waiting = row.waiting or {}
    kind = waiting.get("kind")
    go_on = continuing and kind == Waiting.CONTINUE
    if not go_on and (row.wake_at is None or row.wake_at > now):
        return None
    change = Change(row)
    cause = f"timer-{row.id}-{row.seq}"
    if kind == Waiting.CALL and waiting.get(CANCELLED_IN_FLIGHT):
        _cancelled_call_answered(rules, change, waiting, _timed_out(waiting), cause, now)
    elif kind == Waiting.CALL:
        _history(change, row.step, "timed_out", {"attempt": waiting["attempt"]}, now)
        _call_failed(rules, change, waiting, _timed_out(waiting), cause, now)
    elif kind == Waiting.RETRY:
        command = by_name(waiting["command"]["schema"]).decode(waiting["command"]["body"].encode())
        _send(rules, change, command, cause, now, attempt=waiting["attempt"] + 1, waiting=waiting)
    elif kind == Waiting.ALL:
        _on_timer_all(rules, change, waiting, cause, now)
    elif kind == Waiting.SLEEP:
        _history(change, row.step, "timer_fired", None, now)
        _run_step(rules, change, waiting["then"], None, cause, now)
    elif kind == Waiting.SIGNAL:
        _history(change, row.step, "signal_timed_out", {"name": waiting["name"]}, now)
        if waiting.get("on_timeout"):
            _run_step(rules, change, waiting["on_timeout"], None, cause, now)
        else:
            error = f"timed out waiting for signal {waiting['name']}"
            _finish(change, SagaState.FAILED, None, error, cause, now)
    elif kind == Waiting.CONTINUE:
        _run_step(rules, change, waiting["then"], waiting.get("reply"), cause, now)
    else:
        change.set(wake_at=None)
    return change


def waits_on(waiting: dict[str, Any] | None, message_id: str | None) -> int | None:
    """Which call of ``waiting`` a reply to ``message_id`` answers: 0 for a lone call, the
    index within a ``CallAll``; None when it answers none (late, duplicate, or not ours)."""
    if not waiting or not message_id:
        return None
    if waiting.get("kind") == Waiting.CALL:
        return 0 if waiting.get("message_id") == message_id else None
    if waiting.get("kind") == Waiting.ALL:
        for i, call in enumerate(waiting["calls"]):
            if call["kind"] == Part.CALL and call["message_id"] == message_id:
                return i
    return None


# ── a lone call ──────────────────────────────────────────────────────────────────────────


def _on_reply(rules: Rules, row: Instance, event: Any, env: Envelope, now: float) -> Change:
    change = Change(row)
    waiting = row.waiting
    assert waiting is not None
    if waiting.get(CANCELLED_IN_FLIGHT):
        _cancelled_call_answered(rules, change, waiting, event, env.message_id, now)
        return change
    if isinstance(event, CommandFailed):
        detail = {"error": event.error, "attempt": waiting["attempt"]}
        _history(change, row.step, "call_failed", detail, now)
        _call_failed(rules, change, waiting, event, env.message_id, now)
        return change
    elapsed = (now - waiting.get("sent_at", now)) * 1000
    detail = {"schema": env.schema, "attempt": waiting["attempt"]}
    _history(change, row.step, "reply", detail, now, elapsed)
    if waiting.get("compensate"):
        _compensate_later(change, waiting["compensate"])
    if waiting["then"] == _COMPENSATED:
        _next_compensation(rules, change, env.message_id, now)
    else:
        _run_step(rules, change, waiting["then"], event, env.message_id, now)
    return change


def _cancelled_call_answered(
    rules: Rules,
    change: Change,
    waiting: dict[str, Any],
    answer: Any,
    cause: str,
    now: float,
) -> None:
    """The call in flight when the instance was cancelled has answered (or reached its
    deadline): its undo runs first, then the other compensations. It runs whatever the answer:
    a failure may be a timeout of a call that still took effect, and an undo of what never
    happened is harmless. The call is not tried again."""
    failed = isinstance(answer, CommandFailed)
    detail = {"error": answer.error} if failed else {"attempt": waiting["attempt"]}
    _history(change, change.row.step, "call_failed" if failed else "reply", detail, now)
    _compensate_later(change, waiting["compensate"])
    _next_compensation(rules, change, cause, now)


def _call_failed(
    rules: Rules,
    change: Change,
    waiting: dict[str, Any],
    failure: CommandFailed,
    cause: str,
    now: float,
) -> None:
    """The call failed (or timed out): retry it after its backoff, run its ``on_failure``, or
    fail the saga."""
    error, retryable = failure.error, failure.retryable
    retry = Retry(**waiting["retry"])
    attempt = waiting["attempt"]
    deadline = waiting.get("deadline")
    if retryable and retry.allows(attempt, error) and (deadline is None or now < deadline):
        delay = retry.delay(attempt)
        change.set(waiting={**waiting, "kind": Waiting.RETRY}, wake_at=now + delay)
        detail = {"attempt": attempt + 1, "in_s": delay}
        _history(change, change.row.step, "retry_scheduled", detail, now)
        return
    if waiting["then"] == _COMPENSATED:
        error = f"compensation failed: {error}"
        _finish(change, SagaState.COMPENSATION_FAILED, None, error, cause, now)
        return
    if waiting.get("on_failure"):
        _run_step(rules, change, waiting["on_failure"], failure, cause, now)
        return
    error = f"{waiting['command']['schema']} failed: {error}"
    _finish(change, SagaState.FAILED, None, error, cause, now, code=failure.code)


# ── a fan-out: several calls at once ─────────────────────────────────────────────────────


def _send_all(rules: Rules, change: Change, action: CallAll, cause: str, now: float) -> None:
    if not action.calls:
        _continue(rules, change, step_name(action.then), [], cause, now)
        return
    calls = []
    for call in action.calls:
        message_id, schema, body = _command(rules, change, call.command, cause, now, attempt=1)
        calls.append(
            {
                **_call_waiting(call, schema, body, now),
                "kind": Part.CALL,
                "message_id": message_id,
                "attempt": 1,
                "sent_at": now,
            }
        )
    change.set(
        waiting={"kind": Waiting.ALL, "then": step_name(action.then), "calls": calls},
        wake_at=_all_wake(rules, calls),
    )


def _all_wake(rules: Rules, calls: list[dict[str, Any]]) -> float | None:
    times = [
        c["sent_at"] + c["timeout"] + rules.grace if c["kind"] == Part.CALL else c["retry_at"]
        for c in calls
        if c["kind"] != Part.DONE
    ]
    return min(times) if times else None


def _on_reply_all(
    rules: Rules, row: Instance, index: int, event: Any, env: Envelope, now: float
) -> Change:
    change = Change(row)
    waiting = row.waiting
    assert waiting is not None
    calls = [dict(c) for c in waiting["calls"]]
    call = calls[index]
    if waiting.get(CANCELLED_IN_FLIGHT):
        _cancelled_part_answered(change, calls, index, event, now)
        _cancelled_all_next(rules, change, waiting, calls, env.message_id, now)
        return change
    if isinstance(event, CommandFailed):
        detail = {"error": event.error, "attempt": call["attempt"]}
        _history(change, row.step, "call_failed", detail, now)
        if not _part_failed(change, calls, index, event, env.message_id, now):
            return change
    else:
        detail = {"schema": env.schema, "attempt": call["attempt"]}
        _history(change, row.step, "reply", detail, now, (now - call["sent_at"]) * 1000)
        if call.get("compensate"):
            _compensate_later(change, call["compensate"])
        calls[index] = {
            **call,
            "kind": Part.DONE,
            "reply": {"schema": env.schema, "body": msgspec.to_builtins(event)},
        }
    _all_next(rules, change, waiting, calls, env.message_id, now)
    return change


def _part_failed(
    change: Change,
    calls: list[dict[str, Any]],
    index: int,
    failure: CommandFailed,
    cause: str,
    now: float,
) -> bool:
    """One call of a ``CallAll`` failed: retry it, record its failure for ``then``, or fail
    the saga (False)."""
    call = calls[index]
    error, retryable = failure.error, failure.retryable
    retry = Retry(**call["retry"])
    deadline = call.get("deadline")
    if retryable and retry.allows(call["attempt"], error) and (deadline is None or now < deadline):
        delay = retry.delay(call["attempt"])
        calls[index] = {**call, "kind": Part.RETRY, "retry_at": now + delay}
        detail = {"attempt": call["attempt"] + 1, "in_s": delay}
        _history(change, change.row.step, "retry_scheduled", detail, now)
        return True
    schema = call["command"]["schema"]
    if call.get("on_failure"):
        calls[index] = {
            **call,
            "kind": Part.DONE,
            "reply": {"schema": "failed", "body": msgspec.to_builtins(failure)},
        }
        return True
    error = f"{schema} failed: {error}"
    _finish(change, SagaState.FAILED, None, error, cause, now, code=failure.code)
    return False


def _all_next(
    rules: Rules,
    change: Change,
    waiting: dict[str, Any],
    calls: list[dict[str, Any]],
    cause: str,
    now: float,
) -> None:
    """Go on at ``then`` once every call has answered; until then, wait for the rest."""
    if all(c["kind"] == Part.DONE for c in calls):
        replies = [_decoded(c["reply"]) for c in calls]
        _run_step(rules, change, waiting["then"], replies, cause, now)
        return
    change.set(waiting={**waiting, "calls": calls}, wake_at=_all_wake(rules, calls))


def _on_timer_all(
    rules: Rules, change: Change, waiting: dict[str, Any], cause: str, now: float
) -> None:
    calls = [dict(c) for c in waiting["calls"]]
    if waiting.get(CANCELLED_IN_FLIGHT):
        for i, call in enumerate(calls):
            if call["kind"] == Part.CALL and call["sent_at"] + call["timeout"] + rules.grace <= now:
                _cancelled_part_answered(change, calls, i, _timed_out(call), now)
        _cancelled_all_next(rules, change, waiting, calls, cause, now)
        return
    for i, call in enumerate(calls):
        if call["kind"] == Part.CALL and call["sent_at"] + call["timeout"] + rules.grace <= now:
            _history(change, change.row.step, "timed_out", {"attempt": call["attempt"]}, now)
            if not _part_failed(change, calls, i, _timed_out(call), cause, now):
                return
        elif call["kind"] == Part.RETRY and call["retry_at"] <= now:
            command = by_name(call["command"]["schema"]).decode(call["command"]["body"].encode())
            attempt = call["attempt"] + 1
            message_id, _, _ = _command(rules, change, command, cause, now, attempt=attempt)
            calls[i] = {
                **call,
                "kind": Part.CALL,
                "message_id": message_id,
                "attempt": attempt,
                "sent_at": now,
            }
    _all_next(rules, change, waiting, calls, cause, now)


def _cancel_all(rules: Rules, change: Change, waiting: dict[str, Any]) -> bool:
    """A cancel of an instance waiting on a fan-out: True when calls with an undo are in flight,
    which it then waits for (``waiting`` marked ``CANCELLED_IN_FLIGHT``); False when there are
    none and the compensations may run at once.

    The calls that succeeded already registered their undo. A call waiting to be tried again
    is not: its failed attempt may still have taken effect, so its undo is registered now, as
    for a lone call. The calls without an undo are not waited for: they are marked done, so
    that their replies are dropped as late."""
    calls = []
    undo = []
    for call in waiting["calls"]:
        if call["kind"] == Part.CALL and call.get("compensate"):
            calls.append(dict(call))
            continue
        if call["kind"] == Part.RETRY and call.get("compensate"):
            undo.append(call["compensate"])
        calls.append({**call, "kind": Part.DONE})
    if undo:
        _compensate_later(change, *undo)
    if all(c["kind"] == Part.DONE for c in calls):
        return False
    change.set(
        waiting={**waiting, "calls": calls, CANCELLED_IN_FLIGHT: True},
        wake_at=_all_wake(rules, calls),
    )
    return True


def _cancelled_part_answered(
    change: Change, calls: list[dict[str, Any]], index: int, answer: Any, now: float
) -> None:
    """A call of a fan-out in flight when the instance was cancelled has answered (or reached
    its deadline): its undo joins the compensations whatever the answer, as for a lone call
    (``_cancelled_call_answered``), and it is done: not tried again, and a second delivery of
    its answer no longer matches it (``waits_on``)."""
    call = calls[index]
    failed = isinstance(answer, CommandFailed)
    detail = {"error": answer.error} if failed else {"attempt": call["attempt"]}
    _history(change, change.row.step, "call_failed" if failed else "reply", detail, now)
    _compensate_later(change, call["compensate"])
    calls[index] = {**call, "kind": Part.DONE}


def _cancelled_all_next(
    rules: Rules,
    change: Change,
    waiting: dict[str, Any],
    calls: list[dict[str, Any]],
    cause: str,
    now: float,
) -> None:
    """Once every call in flight at the cancel has answered, run the compensations, newest
    first; until then, wait for the rest."""
    if all(c["kind"] == Part.DONE for c in calls):
        _next_compensation(rules, change, cause, now)
        return
    change.set(waiting={**waiting, "calls": calls}, wake_at=_all_wake(rules, calls))


# ── steps and their actions ──────────────────────────────────────────────────────────────


@functools.cache
def _arity(fn: Callable[..., Any]) -> int:
    return len(inspect.signature(fn).parameters)


def _run_step(rules: Rules, change: Change, name: str, reply: Any, cause: str, now: float) -> None:
    """Run the step ``name`` with ``reply`` and apply the action it returns."""
    definition = rules.definition
    row = change.row
    fn = definition.steps.get(name)
    # The step changes its own copy: a step that changes its data in place would otherwise
    # change the state before it too, which in group mode may still wait for its commit
    # and would then be committed with this step's effect on it (RECOVERY.md).
    change.before = (name, row.data, reply)
    data = copy.deepcopy(row.data)
    if fn is None:
        error = f"{definition.saga_type} v{definition.version} has no step {name!r}"
        _finish(change, SagaState.FAILED, None, error, cause, now)
        return
    run: Run[Any] = Run(
        saga_id=row.id,
        saga_type=row.type,
        tenant=row.tenant,
        correlation_id=row.correlation_id,
        input=definition.decode_input(row.input),
        data=definition.decode_data(data),
        actor=row.actor,
    )
    with tracing.saga_step(row.type, name, row.id):  # its commands are its children
        try:
            action: Action = fn(run) if _arity(fn) == 1 else fn(run, reply)
        except Exception as exc:  # a bug in a definition ends that saga, not the runner
            log.exception("saga %s step %s raised", row.id, name)
            action = Fail(f"step {name} raised {type(exc).__name__}: {exc}")
        change.set(data=definition.encode_data(run.data, data), step=name)
        _apply(rules, change, name, action, cause, now)


def _apply(rules: Rules, change: Change, name: str, action: Action, cause: str, now: float) -> None:
    row = change.row
    _history(change, name, "step", {"action": type(action).__name__}, now)
    if isinstance(action, Call):
        _send(rules, change, action.command, cause, now, call=action)
    elif isinstance(action, CallAll):
        _send_all(rules, change, action, cause, now)
    elif isinstance(action, Reply):
        result = msgspec.to_builtins(action.result) if action.result is not None else None
        change.set(result=result)
        replied = SagaReplied(saga_id=row.id, saga_type=row.type, result=result)
        _emit(change, replied, f"{row.id}.{row.run}.replied", cause, now)
        _continue(rules, change, step_name(action.then), None, cause, now)
    elif isinstance(action, Continue):
        _continue(rules, change, step_name(action.then), action.reply, cause, now)
    elif isinstance(action, Sleep):
        change.set(
            waiting={
                "kind": Waiting.SLEEP,
                "then": step_name(action.then),
                "until": now + action.seconds,
            },
            wake_at=now + action.seconds,
        )
    elif isinstance(action, WaitSignal):
        signals = list(row.data.get("_signals", []))
        for i, sig in enumerate(signals):
            if sig["name"] == action.name:
                del signals[i]
                change.set(data={**row.data, "_signals": signals})
                _run_step(rules, change, step_name(action.then), sig["payload"], cause, now)
                return
        change.set(
            waiting={
                "kind": Waiting.SIGNAL,
                "name": action.name,
                "then": step_name(action.then),
                "on_timeout": step_name(action.on_timeout) if action.on_timeout else None,
                "timeout": action.timeout,
            },
            wake_at=now + action.timeout if action.timeout else None,
        )
    elif isinstance(action, StartChild):
        _start_child(rules, change, action, cause, now)
    elif isinstance(action, StartChildren):
        _start_children(rules, change, action, cause, now)
    elif isinstance(action, Complete):
        result = msgspec.to_builtins(action.result) if action.result is not None else None
        _finish(change, SagaState.COMPLETED, result, None, cause, now)
    elif isinstance(action, Fail):
        if action.compensate and row.data.get("_compensations"):
            change.set(state=SagaState.CANCELLING, error=action.error)
            _next_compensation(rules, change, cause, now)
        else:
            _finish(change, SagaState.FAILED, None, action.error, cause, now)


def _continue(rules: Rules, change: Change, then: str, reply: Any, cause: str, now: float) -> None:
    """A step mode instance checkpoints and goes on in its own transaction; a group mode
    instance goes on at once (its steps are pure: running them in one transition is what a
    replay would do), each step numbered on as if it had been a transition of its own."""
    if rules.definition.durability == "group" and change.inline < MAX_INLINE:
        change.inline += 1
        change.set(seq=change.row.seq + 1)
        _run_step(rules, change, then, reply, cause, now)
        return
    change.set(
        waiting={"kind": Waiting.CONTINUE, "then": then, "reply": msgspec.to_builtins(reply)},
        wake_at=now + CONTINUE_GRACE,
    )
    change.wake_now.append(change.row.id)


# ── what a transition sends ──────────────────────────────────────────────────────────────


def _command(
    rules: Rules,
    change: Change,
    command: msgspec.Struct,
    cause: str,
    now: float,
    *,
    attempt: int,
) -> tuple[str, str, bytes]:
    """Put ``command`` in the outbox: its id (``<saga>.<run>.<seq>.<n>.<attempt>``, the same
    whenever the same transition is applied again), schema name and body."""
    row = change.row
    entry = of_type(type(command))
    message_id = f"{row.id}.{row.run}.{row.seq}.{len(change.outbox)}.{attempt}"
    if rules.definition.durability == "group":
        message_id += GROUP_MARK
    env = Envelope(
        message_id=message_id,
        correlation_id=row.correlation_id,
        causation_id=cause,
        tenant=row.tenant,
        actor=row.actor,
        schema=entry.name,
        version=entry.version,
        traceparent=tracing.current_traceparent(),
    )
    body = encode(command)
    change.outbox.append(
        Outgoing(
            id=message_id,
            saga_id=row.id,
            subject=entry.subject(row.tenant, row.correlation_id),
            headers=env.to_headers(),
            body=body,
            created_at=now,
        )
    )
    if not isinstance(command, SagaCancel):
        detail = {"schema": entry.name, "message_id": message_id, "attempt": attempt}
        _history(change, row.step, "command_sent", detail, now)
    return message_id, entry.name, body


def _send(
    rules: Rules,
    change: Change,
    command: msgspec.Struct,
    cause: str,
    now: float,
    *,
    attempt: int = 1,
    call: Call | None = None,
    waiting: dict[str, Any] | None = None,
) -> None:
    """Send ``command`` and wait for its reply: ``call`` as the step wrote it, or the
    ``waiting`` of an earlier attempt. A ``SagaCancel`` is sent and not waited for."""
    message_id, schema, body = _command(rules, change, command, cause, now, attempt=attempt)
    if isinstance(command, SagaCancel):
        return  # fire and forget: the child's end arrives as sagas.finished
    if call is not None:
        waiting = _call_waiting(call, schema, body, now)
    assert waiting is not None
    change.set(
        waiting={
            **waiting,
            "kind": Waiting.CALL,
            "message_id": message_id,
            "attempt": attempt,
            "sent_at": now,
        },
        wake_at=now + waiting["timeout"] + rules.grace,
    )


def _emit(change: Change, event: msgspec.Struct, message_id: str, cause: str, now: float) -> None:
    row = change.row
    entry = of_type(type(event))
    env = Envelope(
        message_id=message_id,
        correlation_id=row.correlation_id,
        causation_id=cause,
        tenant=row.tenant,
        actor=row.actor,
        schema=entry.name,
        traceparent=tracing.current_traceparent(),
    )
    change.outbox.append(
        Outgoing(
            id=env.message_id,
            saga_id=row.id,
            subject=entry.subject(row.tenant),
            headers=env.to_headers(),
            body=encode(event),
            created_at=now,
        )
    )


def _history(
    change: Change,
    step: str | None,
    event: str,
    detail: dict[str, Any] | None,
    now: float,
    duration_ms: float | None = None,
) -> None:
    row = change.row
    change.history.append(Entry(row.id, row.run, row.seq, step, event, detail, now, duration_ms))


# ── compensation, children and the end ───────────────────────────────────────────────────


def _compensate_later(change: Change, *specs: dict[str, Any]) -> None:
    """Register undo commands (as ``_spec`` stores them), to run newest first on a cancel."""
    data = dict(change.row.data)
    data["_compensations"] = [*data.get("_compensations", []), *specs]
    change.set(data=data)


def _next_compensation(rules: Rules, change: Change, cause: str, now: float) -> None:
    """Send the newest compensation not run yet; end the saga when none is left."""
    data = dict(change.row.data)
    pending = list(data.get("_compensations", []))
    if not pending:
        ended = SagaState.COMPENSATED if data.get("_compensated") else SagaState.CANCELLED
        _finish(change, ended, None, change.row.error, cause, now)
        return
    spec = pending.pop()
    data["_compensations"] = pending
    data["_compensated"] = data.get("_compensated", 0) + 1
    change.set(data=data)
    command = by_name(spec["schema"]).decode(spec["body"].encode())
    call = Call(command, then=_COMPENSATED, timeout=60, retry=_COMPENSATION_RETRY)
    _send(rules, change, command, cause, now, call=call)


def _start_child(rules: Rules, change: Change, action: StartChild, cause: str, now: float) -> None:
    row = change.row
    child_id = _new_child(
        rules, change, action, action.child_id or f"{row.id}.child{row.seq}", cause, now
    )
    change.set(
        waiting={
            "kind": Waiting.CHILD,
            "child_id": child_id,
            "then": step_name(action.then),
            "compensate": _spec(action.compensate),
        },
        wake_at=None,
    )


def _start_children(
    rules: Rules, change: Change, action: StartChildren, cause: str, now: float
) -> None:
    if not action.children:
        _continue(rules, change, step_name(action.then), [], cause, now)
        return
    row = change.row
    children = []
    for i, child in enumerate(action.children):
        default_id = f"{row.id}.child{row.seq}.{i}"
        child_id = _new_child(rules, change, child, child.child_id or default_id, cause, now)
        children.append(
            {"child_id": child_id, "compensate": _spec(child.compensate), "outcome": None}
        )
    change.set(
        waiting={"kind": Waiting.CHILDREN, "children": children, "then": step_name(action.then)},
        wake_at=None,
    )


def _new_child(
    rules: Rules, change: Change, action: StartChild, child_id: str, cause: str, now: float
) -> str:
    """Add a child instance to ``change``: inserted in the parent's transaction, woken at
    once after the commit."""
    row = change.row
    definition = rules.latest(action.saga_type)
    env = Envelope(
        message_id=cause,
        correlation_id=row.correlation_id,
        tenant=row.tenant,
        actor=row.actor,
        schema="sagas.start",
    )
    raw = msgspec.to_builtins(action.input)
    child = msgspec.structs.replace(
        new_instance(definition, child_id, raw, env, now, parent_id=row.id),
        waiting={"kind": Waiting.CONTINUE, "then": definition.first, "reply": None},
        wake_at=now + CONTINUE_GRACE,
    )
    change.children.append(child)
    change.wake_now.append(child_id)
    detail = {"child_id": child_id, "type": action.saga_type}
    _history(change, row.step, "child_started", detail, now)
    return child_id


def _child_of_many_finished(
    rules: Rules,
    row: Instance,
    waiting: dict[str, Any],
    event: SagaFinished,
    cause: str,
    now: float,
) -> Change | None:
    """One child of a ``StartChildren`` ended: keep its outcome; go on when all have."""
    children = [dict(c) for c in waiting["children"]]
    index = next((i for i, c in enumerate(children) if c["child_id"] == event.saga_id), None)
    if index is None or children[index].get("outcome") is not None:
        return None
    change = Change(row)
    child = children[index]
    child["outcome"] = msgspec.to_builtins(event)
    if event.state in _LEFT_EFFECTS and child.get("compensate"):
        _compensate_later(change, child["compensate"])
    detail = {"child_id": event.saga_id, "state": event.state}
    _history(change, row.step, "child_finished", detail, now)
    if waiting.get(CANCELLED_IN_FLIGHT):
        if _awaited(children):
            change.set(waiting={**waiting, "children": children})
        else:
            _next_compensation(rules, change, cause, now)
        return change
    if all(c.get("outcome") is not None for c in children):
        outcomes = [msgspec.convert(c["outcome"], SagaFinished) for c in children]
        _run_step(rules, change, waiting["then"], outcomes, cause, now)
    else:
        change.set(waiting={**waiting, "children": children})
    return change


def _awaited(children: list[dict[str, Any]]) -> bool:
    """Whether a cancelled instance still waits for one of its ``children``: a running child
    with an undo (it may complete, effects in place, before its cancel reaches it). A running
    child without one is not waited for."""
    return any(c.get("compensate") and c.get("outcome") is None for c in children)


def _finish(
    change: Change,
    state: SagaState,
    result: Any,
    error: str | None,
    cause: str,
    now: float,
    *,
    code: FailureCode | None = None,
) -> None:
    """End the saga in ``state`` and announce it (``sagas.finished``)."""
    if state == SagaState.FAILED:
        _keep_resume_point(change)
    row = change.row
    change.set(
        state=state,
        result=result,
        error=error,
        error_code=code,
        waiting=None,
        wake_at=None,
        finished_at=now,
    )
    event = SagaFinished(
        saga_id=row.id,
        saga_type=row.type,
        state=state,
        result=result,
        error=error,
        parent_id=row.parent_id,
        error_code=code,
    )
    _emit(change, event, f"{row.id}.{row.run}.finished", cause, now)
    detail = {"error": error} if error else None
    _history(change, row.step, state, detail, now, (now - row.created_at) * 1000)


def _keep_resume_point(change: Change) -> None:
    """Keep where a failing instance failed, for ``on_retry``: the step that failed it, or
    the wait it failed in."""
    row = change.row
    if change.before is not None:
        point: dict[str, Any] | None = operations.failed_in_step(*change.before)
    else:
        point = operations.failed_waiting(row.step, row.waiting)
    if point is not None:
        change.set(data={**row.data, operations.RESUME: point})


# ── what an instance stores of its calls ─────────────────────────────────────────────────


def _call_waiting(call: Call, schema: str, body: bytes, now: float) -> dict[str, Any]:
    """What an instance remembers of a call it waits on: enough to retry, time out, fall back
    and compensate without the definition's objects."""
    return {
        "kind": Waiting.CALL,
        "then": step_name(call.then),
        "command": {"schema": schema, "body": body.decode()},
        "retry": {
            "initial": call.retry.initial,
            "coefficient": call.retry.coefficient,
            "maximum": call.retry.maximum,
            "max_attempts": call.retry.max_attempts,
            "non_retryable": list(call.retry.non_retryable),
        },
        "timeout": call.timeout,
        "deadline": now + call.schedule_to_close if call.schedule_to_close else None,
        "schedule_to_close": call.schedule_to_close,
        "compensate": _spec(call.compensate),
        "on_failure": step_name(call.on_failure) if call.on_failure else None,
    }


def _spec(command: msgspec.Struct | None) -> dict[str, Any] | None:
    """A command as an instance stores it (to send later): its schema name and JSON body."""
    if command is None:
        return None
    return {"schema": of_type(type(command)).name, "body": encode(command).decode()}


def _decoded(reply: dict[str, Any]) -> Any:
    if reply["schema"] == "failed":
        return msgspec.convert(reply["body"], CommandFailed)
    return msgspec.convert(reply["body"], by_name(reply["schema"]).type)


def _timed_out(waiting: dict[str, Any]) -> CommandFailed:
    """A call's start-to-close timeout, as the failure its retry policy judges."""
    return CommandFailed(
        command=waiting["command"]["schema"],
        error="timeout: no reply within start-to-close",
        retryable=True,
    )
