"""The agent task, version 1: kept until its instances have finished; new tasks start on
version 2 (agent_task.py), which also has policy judge the goal, prompts and answers, and budgets.

The agent task: plan, carry out each step (with tools), optionally wait for approval, report.

    plan ─→ for each step: ask the model ─(tool call)→ run the tool ─→ keep a note in memory
         ─→ [approval signal] ─→ write the report

Every note is kept in memory with a compensation that deletes it, so a cancelled task leaves
nothing behind.

Tools: the task runs only ``platform_tools`` — registry tools the request names as such — and each
call is judged by policy for the caller's role and then authorized again by the tools process,
exactly like a direct call. ``tools`` are the caller's own specs: the model may call them, but the
task cannot run them and notes that instead; a caller's spec shadows a platform tool of the same
name. A refused call does not end the task: the refusal becomes the step's note. ``role`` (set by
the gateway from the credential) and the user the task acts for travel on every tool and memory
command, and a task without a role may call no tool.
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
from schemas.memory import MemoryAdd, MemoryDelete
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, ToolSpec
from schemas.tasks import AgentTaskInput, AgentTaskResult
from schemas.tools import ToolInvoke, ToolResult

agent_task_v1: Definition[AgentTaskInput] = Definition(
    "agent_task", version=1, input_type=AgentTaskInput
)

Task = Run[AgentTaskInput]
MODEL_RETRY = Retry(initial=0.5, max_attempts=3)
QUICK = Retry(initial=0.2, max_attempts=3)
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$")


def _platform_tools(run: Task) -> list[ToolSpec]:
    """The platform tools the task may run: those no caller tool of the same name shadows."""
    callers = {t.name for t in run.input.tools}
    return [t for t in run.input.platform_tools if t.name not in callers]


def _owner(run: Task) -> str:
    """Whom the task works for: the named user, else the user who started it."""
    return run.input.user or run.actor


def _step(run: Task) -> str:
    return str(run.data["plan"][len(run.data["notes"])])


def _ask(run: Task, system: str, user: str, *, tools: bool = False) -> SlmComplete:
    return SlmComplete(
        model=run.input.model,
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=user),
        ],
        tools=[*run.input.tools, *_platform_tools(run)] if tools else [],
        user=run.input.user,
        key_id=run.input.key_id,
    )


def _account(run: Task, done: SlmCompleted) -> None:
    usage = run.data.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
    usage["prompt_tokens"] += done.usage.prompt_tokens
    usage["completion_tokens"] += done.usage.completion_tokens
    run.data["cost_usd"] = run.data.get("cost_usd", 0.0) + done.cost_usd


@agent_task_v1.start
def plan(run: Task) -> Action:
    system = (
        f"You plan research tasks. Answer with at most {run.input.max_steps} numbered steps, "
        "one per line."
    )
    return Call(_ask(run, system, run.input.goal), then=planned, timeout=180, retry=MODEL_RETRY)


@agent_task_v1.step
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


@agent_task_v1.step
def work(run: Task) -> Action:
    i = len(run.data["notes"])
    if i >= len(run.data["plan"]):
        return Continue(then=maybe_wait_for_approval)
    step = run.data["plan"][i]
    done_so_far = "\n".join(run.data["notes"]) or "(nothing yet)"
    system = f"You carry out one step of a research plan for the goal: {run.input.goal}"
    user = f"Step {i + 1}: {step}\nNotes so far:\n{done_so_far}"
    return Call(_ask(run, system, user, tools=True), then=worked, timeout=180, retry=MODEL_RETRY)


@agent_task_v1.step
def worked(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    calls = done.message.tool_calls or []
    if not calls:
        return _keep_note(run, f"{_step(run)}: {done.message.content or ''}")
    call = calls[0]
    run.data["tool"] = call.name
    if call.name not in {t.name for t in _platform_tools(run)}:
        return _keep_note(
            run, f"{_step(run)}: {call.name} is not a platform tool of this task; it was not run"
        )
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {}
    run.data["tool_arguments"] = arguments if isinstance(arguments, dict) else {}
    run.data["tool_call"] = f"{run.saga_id}:step{len(run.data['notes'])}:{call.id}"
    return Call(
        PolicyEvaluate(
            stage="tool_call",
            role=run.input.role or "",
            tool_name=call.name,
            tool_arguments=run.data["tool_arguments"],
        ),
        then=tool_checked,
        timeout=10,
        retry=QUICK,
    )


@agent_task_v1.step
def tool_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    tool = run.data["tool"]
    if verdict.decision == "deny":
        reasons = "; ".join(verdict.reasons) or "the tenant's policy"
        return _keep_note(run, f"{_step(run)}: {tool} was refused by policy: {reasons}")
    arguments = run.data["tool_arguments"]
    if verdict.decision == "redact" and verdict.redacted_text:
        arguments = json.loads(verdict.redacted_text)  # the arguments with the findings masked
    return Call(
        ToolInvoke(
            call_id=run.data["tool_call"],
            name=tool,
            arguments=arguments,
            role=run.input.role,
            user=_owner(run),
        ),
        then=tool_returned,
        timeout=120,
        retry=Retry(initial=0.5, max_attempts=3),
    )


@agent_task_v1.step
def tool_returned(run: Task, result: ToolResult) -> Action:
    tool = run.data.get("tool")
    if result.refused_by is not None:
        return _keep_note(run, f"{_step(run)}: {tool} was {result.error}")
    outcome = json.dumps(result.output) if result.ok else f"error: {result.error}"
    return _keep_note(run, f"{_step(run)}: {tool} returned {outcome}")


def _keep_note(run: Task, note: str) -> Action:
    i = len(run.data["notes"])
    note_id = f"{run.saga_id}:note{i}"
    run.data["pending_note"] = note
    return Call(
        MemoryAdd(
            id=note_id,
            text=note,
            user=_owner(run),
            session=run.saga_id,
            metadata={"agent_task": run.saga_id, "step": i},
            caller_role=run.input.role,
        ),
        then=noted,
        timeout=30,
        retry=Retry(initial=0.5, max_attempts=5),
        compensate=MemoryDelete(ids=[note_id], user=_owner(run), caller_role=run.input.role),
    )


@agent_task_v1.step
def noted(run: Task, added: Any) -> Action:
    run.data["notes"].append(run.data.pop("pending_note"))
    return Continue(then=work)


@agent_task_v1.step
def maybe_wait_for_approval(run: Task) -> Action:
    if not run.input.require_approval:
        return Continue(then=write_report)
    return WaitSignal("approve", then=reviewed, timeout=run.input.approval_timeout)


@agent_task_v1.step
def reviewed(run: Task, decision: dict[str, Any] | None) -> Action:
    decision = decision or {}
    if decision.get("approved") is False:
        return Fail(
            f"rejected by {decision.get('by', 'reviewer')}: {decision.get('comment', '')}".strip()
        )
    run.data["approved_by"] = decision.get("by")
    return Continue(then=write_report)


@agent_task_v1.step
def write_report(run: Task) -> Action:
    notes = "\n".join(f"- {n}" for n in run.data["notes"])
    system = "You write concise research reports from notes."
    user = f"Goal: {run.input.goal}\nNotes:\n{notes}\nWrite the final report."
    return Call(_ask(run, system, user), then=reported, timeout=180, retry=MODEL_RETRY)


@agent_task_v1.step
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
