"""What an operator's terminate and retry do to an instance, as plain functions of its stored row.

The engine's entry points (``Engine.terminate``, ``Engine.retry``) load the instance and ask
these functions whether it may; the transitions (``on_terminate``, ``on_retry`` in
sagas/transitions.py) use the rest to decide what changes. Nothing here does I/O, so each rule
is read and tested on its own.

Retry needs to know where a failed saga failed, which its row no longer says once it has ended
(an ended instance waits for nothing). So the transition that fails an instance keeps its
*resume point* in the instance's data, under ``RESUME`` (a key of the engine's own, hidden from
its steps):

- the wait it failed in: a call that was refused or timed out for good, the calls of a
  ``CallAll`` one of which failed so, or a signal wait that timed out. A retry waits there again
  with its attempt counters and deadlines started afresh, and sends what has no reply yet;
- or the step that raised (or returned ``Fail``, or is missing from its definition): the data
  the step was given and the reply it was answering. A retry runs that step again on them —
  after a fix was deployed, it now decides differently; a step is a pure function of them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sagas.change import Instance
from schemas.catalogue import UnknownMessage, by_name, of_type
from schemas.common import CommandFailed
from schemas.sagas import ENDED, Part, SagaState, Waiting

# The data key a failed instance keeps its resume point under.
RESUME = "_retry"

# Why a saga in each state cannot be retried: the refusal an operator reads.
_NOT_RETRYABLE = {
    SagaState.RUNNING: "it is still running",
    SagaState.CANCELLING: "it is being cancelled (its compensations are running)",
    SagaState.COMPLETED: "it completed",
    SagaState.CANCELLED: "it was cancelled",
    SagaState.COMPENSATED: (
        "its compensations have already run, undoing its steps; start it again instead "
        "(soma saga start --id … --reuse allow_duplicate_failed_only)"
    ),
    SagaState.COMPENSATION_FAILED: (
        "its compensations ran and one of them failed, so some of its steps are undone; "
        "repair by hand, then start it again"
    ),
    SagaState.TERMINATED: "it was terminated",
}


def why_not_retryable(row: Instance, durability: str) -> str | None:
    """None when the instance ``row`` may be retried: it failed, where a retry can take it up
    again (its resume point), and it runs with step durability; otherwise why not."""
    saga_id, state = row.id, row.state
    if state != SagaState.FAILED:
        reason = _NOT_RETRYABLE.get(SagaState(state), f"it is {state}")
        return f"saga {saga_id} is {state}, not failed: {reason}; only a failed saga can be retried"
    if durability == "group":
        return (
            f"saga {saga_id} ({row.type}) runs with group durability: it answers a request "
            "whose caller has gone by now; start a new one instead"
        )
    if RESUME not in row.data:
        return f"saga {saga_id} failed where a retry cannot take it up again"
    return None


def why_not_terminable(saga_id: str, state: str) -> str | None:
    """None when a saga in ``state`` may be terminated (running or cancelling)."""
    if state in ENDED:
        return f"saga {saga_id} has already ended ({state}); nothing to terminate"
    return None


# ── the resume point a failure leaves ───────────────────────────────────────────────────


def failed_in_step(step: str, data: dict[str, Any], reply: Any) -> dict[str, Any]:
    """The resume point of a step that raised or failed: run ``step`` again on ``data``."""
    return {
        "step": step,
        "data": {k: v for k, v in data.items() if k != RESUME},
        "reply": encode_reply(reply),
    }


def failed_waiting(step: str | None, waiting: dict[str, Any] | None) -> dict[str, Any] | None:
    """The resume point of a failed wait (a call, a ``CallAll``, a signal); None for a wait a
    retry cannot take up again."""
    kind = (waiting or {}).get("kind")
    if kind not in (Waiting.CALL, Waiting.RETRY, Waiting.ALL, Waiting.SIGNAL):
        return None
    return {"step": step, "waiting": waiting}


def resumed_waiting(point: dict[str, Any], now: float) -> tuple[dict[str, Any], float | None]:
    """The wait a retry puts a failed instance back in, and when the timer pass takes it up:
    a call is due at once as its first attempt again; a signal wait waits its timeout again."""
    waiting = dict(point["waiting"])
    kind = waiting["kind"]
    if kind in (Waiting.CALL, Waiting.RETRY):
        waiting = {**_afresh(waiting, now), "kind": Waiting.RETRY}
        return waiting, now
    if kind == Waiting.ALL:
        calls = [
            c
            if c["kind"] == Part.DONE
            else {**_afresh(c, now), "kind": Part.RETRY, "retry_at": now}
            for c in waiting["calls"]
        ]
        return {**waiting, "calls": calls}, now
    timeout = waiting.get("timeout")
    return waiting, now + timeout if timeout else None


def _afresh(call: dict[str, Any], now: float) -> dict[str, Any]:
    """A call as if never sent: the next attempt is the first, its deadline counts from now."""
    budget = call.get("schedule_to_close")
    return {**call, "attempt": 0, "deadline": now + budget if budget else None}


# ── replies, as a resume point stores them ──────────────────────────────────────────────


def encode_reply(reply: Any) -> dict[str, Any]:
    """A step's reply as JSON that ``decode_reply`` turns back into what the step was given:
    an event of the catalogue, a command's failure, a list of those, or plain data."""
    if isinstance(reply, CommandFailed):
        return {"failed": msgspec.to_builtins(reply)}
    if isinstance(reply, list):
        return {"list": [encode_reply(r) for r in reply]}
    if isinstance(reply, msgspec.Struct):
        try:
            return {"schema": of_type(type(reply)).name, "body": msgspec.to_builtins(reply)}
        except UnknownMessage:
            pass
    return {"value": msgspec.to_builtins(reply)}


def decode_reply(stored: dict[str, Any]) -> Any:
    if "failed" in stored:
        return msgspec.convert(stored["failed"], CommandFailed)
    if "list" in stored:
        return [decode_reply(r) for r in stored["list"]]
    if "schema" in stored:
        return msgspec.convert(stored["body"], by_name(stored["schema"]).type)
    return stored.get("value")


# ── terminate ───────────────────────────────────────────────────────────────────────────


def terminated_error(reason: str) -> str:
    return f"terminated: {reason}" if reason else "terminated"
