"""Saga definitions used by the engine tests; their steps call the test tools service."""

from __future__ import annotations

from typing import Any

import msgspec

from sagas.definition import (
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
)
from schemas.sagas import SagaFinished
from schemas.tools import ToolInvoke, ToolResult

Data = dict[str, Any]


def tool(run: Run[Data], n: int, name: str = "effect", **arguments: Any) -> ToolInvoke:
    return ToolInvoke(call_id=f"{run.saga_id}:{n}", name=name, arguments=arguments)


three_steps: Definition[Data] = Definition("three_steps", version=1, input_type=dict)


@three_steps.start
def first(run: Run[Data]) -> Call:
    return Call(tool(run, 1), then=second, timeout=30)


@three_steps.step
def second(run: Run[Data], result: ToolResult) -> Call:
    run.data["outputs"] = [result.output]
    return Call(tool(run, 2), then=third, timeout=30)


@three_steps.step
def third(run: Run[Data], result: ToolResult) -> Continue:
    run.data["outputs"].append(result.output)
    return Continue(then=done)


@three_steps.step
def done(run: Run[Data]) -> Complete:
    return Complete({"outputs": run.data["outputs"]})


retrying: Definition[Data] = Definition("retrying", version=1, input_type=dict)


@retrying.start
def flaky_call(run: Run[Data]) -> Call:
    return Call(
        tool(run, 1, name="flaky", fail_times=run.input.get("fail_times", 2)),
        then=after_flaky,
        timeout=30,
        retry=Retry(initial=0.2, coefficient=2.0, max_attempts=run.input.get("max_attempts", 5)),
    )


@retrying.step
def after_flaky(run: Run[Data], result: ToolResult) -> Complete:
    return Complete({"output": result.output})


refused: Definition[Data] = Definition("refused", version=1, input_type=dict)


@refused.start
def refused_call(run: Run[Data]) -> Call:
    return Call(tool(run, 1, name="refuse"), then=after_refused, retry=Retry(initial=0.1))


@refused.step
def after_refused(run: Run[Data], result: ToolResult) -> Complete:
    return Complete({"unexpected": True})


sleeper: Definition[Data] = Definition("sleeper", version=1, input_type=dict)


@sleeper.start
def nap(run: Run[Data]) -> Sleep:
    return Sleep(run.input.get("seconds", 2.0), then=woke)


@sleeper.step
def woke(run: Run[Data]) -> Complete:
    return Complete({})


approval: Definition[Data] = Definition("approval", version=1, input_type=dict)


@approval.start
def draft(run: Run[Data]) -> Call:
    return Call(
        tool(run, 1, label="draft"), then=ask, compensate=tool(run, 91, name="undo", label="draft")
    )


@approval.step
def ask(run: Run[Data], result: ToolResult) -> Call:
    return Call(
        tool(run, 2, label="review"),
        then=wait_approval,
        compensate=tool(run, 92, name="undo", label="review"),
    )


@approval.step
def wait_approval(run: Run[Data], result: ToolResult) -> WaitSignal:
    return WaitSignal("approve", then=approved)


@approval.step
def approved(run: Run[Data], payload: dict[str, Any]) -> Complete:
    return Complete({"approved_by": payload.get("by")})


parent: Definition[Data] = Definition("parent", version=1, input_type=dict)


@parent.start
def spawn(run: Run[Data]) -> StartChild:
    return StartChild("three_steps", {}, then=child_done)


@parent.step
def child_done(run: Run[Data], outcome: SagaFinished) -> Complete:
    return Complete({"child_state": outcome.state, "child_result": outcome.result})


versioned_v1: Definition[Data] = Definition("versioned", version=1, input_type=dict)
versioned_v2: Definition[Data] = Definition("versioned", version=2, input_type=dict)


@versioned_v1.start
def v1_wait(run: Run[Data]) -> WaitSignal:
    return WaitSignal("go", then=v1_end)


@versioned_v1.step
def v1_end(run: Run[Data], payload: Any) -> Complete:
    return Complete({"version": 1})


@versioned_v2.start
def v2_wait(run: Run[Data]) -> WaitSignal:
    return WaitSignal("go", then=v2_end)


@versioned_v2.step
def v2_end(run: Run[Data], payload: Any) -> Complete:
    return Complete({"version": 2})


# Group mode: one call, two at once, an early reply, one call after it.
grouped: Definition[Data] = Definition("grouped", version=1, input_type=dict, durability="group")


@grouped.start
def g_first(run: Run[Data]) -> Call:
    return Call(tool(run, 1), then=g_second, timeout=30)


@grouped.step
def g_second(run: Run[Data], result: ToolResult) -> CallAll:
    run.data["outputs"] = [result.output]
    return CallAll(
        [Call(tool(run, 2), then=g_joined, timeout=30), Call(tool(run, 3), then=g_joined)],
        then=g_joined,
    )


@grouped.step
def g_joined(run: Run[Data], results: list[ToolResult]) -> Reply:
    run.data["outputs"] += [r.output for r in results]
    return Reply({"outputs": run.data["outputs"]}, then=g_after_reply)


@grouped.step
def g_after_reply(run: Run[Data]) -> Call:
    return Call(tool(run, 4), then=g_done, timeout=30)


@grouped.step
def g_done(run: Run[Data], result: ToolResult) -> Complete:
    return Complete({"outputs": [*run.data["outputs"], result.output]})


# A call of several that fails for good hands its failure to the next step when it says so.
joined_failure: Definition[Data] = Definition(
    "joined_failure", version=1, input_type=dict, durability="group"
)


@joined_failure.start
def jf_both(run: Run[Data]) -> CallAll:
    return CallAll(
        [
            Call(tool(run, 1), then=jf_joined),
            Call(tool(run, 2, name="refuse"), then=jf_joined, on_failure=jf_joined),
        ],
        then=jf_joined,
    )


@joined_failure.step
def jf_joined(run: Run[Data], results: list[Any]) -> Complete:
    return Complete({"kinds": [type(r).__name__ for r in results]})


# Typed working data: steps read and write a Struct; the engine stores it as JSON.
class Tally(msgspec.Struct):
    outputs: list[str] = []
    calls: int = 0


typed: Definition[Data] = Definition("typed", version=1, input_type=dict, data_type=Tally)


@typed.start(name="ask_first")
def typed_first(run: Run[Data]) -> Call:
    return Call(tool(run, 1), then=typed_second, timeout=30)


@typed.step(name="ask_second", aliases=("typed_second_before_rename",))
def typed_second(run: Run[Data], result: ToolResult) -> Call:
    run.data.outputs.append(result.output)
    run.data.calls += 1
    return Call(tool(run, 2), then=typed_done, timeout=30)


@typed.step
def typed_done(run: Run[Data], result: ToolResult) -> Complete:
    run.data.outputs.append(result.output)
    run.data.calls += 1
    return Complete({"outputs": run.data.outputs, "calls": run.data.calls})


# Fan-out: two "approval" children at once, each undone by the parent once it has completed.
fan_out: Definition[Data] = Definition("fan_out", version=1, input_type=dict)


@fan_out.start
def fo_spawn(run: Run[Data]) -> StartChildren:
    return StartChildren(
        [
            StartChild(
                "approval",
                {},
                then=fo_joined,
                child_id=f"{run.saga_id}.{label}",
                compensate=tool(run, 90 + n, name="undo", label=label),
            )
            for n, label in enumerate(("left", "right"))
        ],
        then=fo_joined,
    )


@fan_out.step
def fo_joined(run: Run[Data], outcomes: list[SagaFinished]) -> WaitSignal:
    run.data["states"] = [o.state for o in outcomes]
    return WaitSignal("decide", then=fo_decided)


@fan_out.step
def fo_decided(run: Run[Data], payload: dict[str, Any]) -> Complete | Fail:
    if payload.get("approved") is False:
        return Fail("rejected", compensate=True)
    return Complete({"states": run.data["states"]})


# One "approval" child, undone by the parent if it ends with its effects in place.
guarded: Definition[Data] = Definition("guarded", version=1, input_type=dict)


@guarded.start
def gd_spawn(run: Run[Data]) -> StartChild:
    return StartChild(
        "approval",
        {},
        then=gd_done,
        child_id=f"{run.saga_id}.child",
        compensate=tool(run, 90, name="undo", label="child"),
    )


@guarded.step
def gd_done(run: Run[Data], outcome: SagaFinished) -> Complete:
    return Complete({"child_state": outcome.state})


# A fan-out of two calls with an undo each, and one without: a cancel while they are in flight
# waits for the two with an undo, then undoes what they did.
undone_fan_out: Definition[Data] = Definition("undone_fan_out", version=1, input_type=dict)


@undone_fan_out.start
def ufo_all(run: Run[Data]) -> CallAll:
    return CallAll(
        [
            Call(
                tool(run, 1, label="left"),
                then=ufo_joined,
                timeout=30,
                compensate=tool(run, 91, name="undo", label="left"),
            ),
            Call(
                tool(run, 2, label="right"),
                then=ufo_joined,
                timeout=30,
                compensate=tool(run, 92, name="undo", label="right"),
            ),
            Call(tool(run, 3, name="lookup"), then=ufo_joined, timeout=30),
        ],
        then=ufo_joined,
    )


@undone_fan_out.step
def ufo_joined(run: Run[Data], results: list[ToolResult]) -> WaitSignal:
    return WaitSignal("approve", then=ufo_approved)


@undone_fan_out.step
def ufo_approved(run: Run[Data], payload: dict[str, Any]) -> Complete:
    return Complete({"approved_by": payload.get("by")})


ALL = [
    three_steps,
    retrying,
    refused,
    sleeper,
    approval,
    parent,
    versioned_v1,
    grouped,
    joined_failure,
    typed,
    fan_out,
    guarded,
    undone_fan_out,
]
