"""The agent task: plan, carry out each step (with tools), optionally wait for approval, report.

    plan ─→ for each step: ask the model ─(tool call)→ run the tool ─→ keep a note in memory
         ─→ [approval signal] ─→ write the report

Every note is kept in memory with a compensation that deletes it, so a cancelled task leaves
nothing behind.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sagas.definition import (
    Action,
    Call,
    Complete,
    Continue,
    Definition,
    Fail,
    Retry,
    Run,
    WaitSignal,
)
from schemas.base import Usage
from schemas.memories import MemoryAdd, MemoryDelete
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted
from schemas.tasks import AgentTaskInput, AgentTaskResult
from schemas.tools import ToolInvoke, ToolResult

agent_task: Definition[AgentTaskInput] = Definition(
    "agent_task", version=1, input_type=AgentTaskInput
)

Task = Run[AgentTaskInput]
MODEL_RETRY = Retry(initial=0.5, max_attempts=3)
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$")


def _ask(run: Task, system: str, user: str, *, tools: bool = False) -> SlmComplete:
    return SlmComplete(
        model=run.input.model,
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=user),
        ],
        tools=run.input.tools if tools else [],
        user=run.input.user,
    )


def _account(run: Task, done: SlmCompleted) -> None:
    usage = run.data.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
    usage["prompt_tokens"] += done.usage.prompt_tokens
    usage["completion_tokens"] += done.usage.completion_tokens
    run.data["cost_usd"] = run.data.get("cost_usd", 0.0) + done.cost_usd


@agent_task.start
def plan(run: Task) -> Action:
    system = (
        f"You plan research tasks. Answer with at most {run.input.max_steps} numbered steps, "
        "one per line."
    )
    return Call(_ask(run, system, run.input.goal), then=planned, timeout=180, retry=MODEL_RETRY)


@agent_task.step
def planned(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    lines = [
        m.group(1).strip()
        for m in map(_STEP_LINE.match, (done.message.content or "").splitlines())
        if m
    ]
    run.data["plan"] = (lines or [run.input.goal])[: max(run.input.max_steps, 1)]
    run.data["notes"] = []
    return Continue(then=work)


@agent_task.step
def work(run: Task) -> Action:
    i = len(run.data["notes"])
    if i >= len(run.data["plan"]):
        return Continue(then=maybe_wait_for_approval)
    step = run.data["plan"][i]
    done_so_far = "\n".join(run.data["notes"]) or "(nothing yet)"
    system = f"You carry out one step of a research plan for the goal: {run.input.goal}"
    user = f"Step {i + 1}: {step}\nNotes so far:\n{done_so_far}"
    return Call(_ask(run, system, user, tools=True), then=worked, timeout=180, retry=MODEL_RETRY)


@agent_task.step
def worked(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    calls = done.message.tool_calls or []
    i = len(run.data["notes"])
    if calls:
        call = calls[0]
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {}
        run.data["tool"] = call.name
        return Call(
            ToolInvoke(
                call_id=f"{run.saga_id}:step{i}:{call.id}", name=call.name, arguments=arguments
            ),
            then=tool_returned,
            timeout=120,
            retry=Retry(initial=0.5, max_attempts=3),
        )
    return _keep_note(run, f"{run.data['plan'][i]}: {done.message.content or ''}")


@agent_task.step
def tool_returned(run: Task, result: ToolResult) -> Action:
    i = len(run.data["notes"])
    outcome = json.dumps(result.output) if result.ok else f"error: {result.error}"
    return _keep_note(run, f"{run.data['plan'][i]}: {run.data.get('tool')} returned {outcome}")


def _keep_note(run: Task, note: str) -> Action:
    i = len(run.data["notes"])
    note_id = f"{run.saga_id}:note{i}"
    run.data["pending_note"] = note
    return Call(
        MemoryAdd(
            id=note_id,
            text=note,
            user=run.input.user,
            session=run.saga_id,
            metadata={"agent_task": run.saga_id, "step": i},
        ),
        then=noted,
        timeout=30,
        retry=Retry(initial=0.5, max_attempts=5),
        compensate=MemoryDelete(ids=[note_id]),
    )


@agent_task.step
def noted(run: Task, added: Any) -> Action:
    run.data["notes"].append(run.data.pop("pending_note"))
    return Continue(then=work)


@agent_task.step
def maybe_wait_for_approval(run: Task) -> Action:
    if not run.input.require_approval:
        return Continue(then=write_report)
    return WaitSignal("approve", then=reviewed, timeout=run.input.approval_timeout)


@agent_task.step
def reviewed(run: Task, decision: dict[str, Any] | None) -> Action:
    decision = decision or {}
    if decision.get("approved") is False:
        return Fail(
            f"rejected by {decision.get('by', 'reviewer')}: {decision.get('comment', '')}".strip()
        )
    run.data["approved_by"] = decision.get("by")
    return Continue(then=write_report)


@agent_task.step
def write_report(run: Task) -> Action:
    notes = "\n".join(f"- {n}" for n in run.data["notes"])
    system = "You write concise research reports from notes."
    user = f"Goal: {run.input.goal}\nNotes:\n{notes}\nWrite the final report."
    return Call(_ask(run, system, user), then=reported, timeout=180, retry=MODEL_RETRY)


@agent_task.step
def reported(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    u = run.data.get("usage", {})
    return Complete(
        AgentTaskResult(
            report=done.message.content or "",
            plan=run.data["plan"],
            notes=run.data["notes"],
            usage=Usage(
                prompt_tokens=u.get("prompt_tokens", 0),
                completion_tokens=u.get("completion_tokens", 0),
            ),
            cost_usd=run.data.get("cost_usd", 0.0),
            approved_by=run.data.get("approved_by"),
        )
    )
