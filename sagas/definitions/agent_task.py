"""The agent task: policy judges the goal, then plan, carry out each step (with tools),
optionally wait for approval, report — every prompt, tool call and answer judged before it acts.

    check the goal ─deny→ fail at once
      → plan (answer checked) ─→ for each step: check the prompt → ask the model
            ├─ tool call → agent's allow-list → policy (role, arguments) → run the tool
            └─ answer → check the answer
         → keep a note in memory ─→ [approval signal] ─→ check the prompt → write the report
         → check the report → end

Every note is kept in memory with a compensation that deletes it, so a cancelled task leaves
nothing behind.

Tools: the task runs only ``platform_tools`` — registry tools the request names as such — that
the agent's ``allowed_tools`` admit, and each call is judged by policy for the caller's role
and then authorized again by the tools process, exactly like a direct call. ``tools`` are the
caller's own specs: the model may call them, but the task cannot run them and notes that
instead; a caller's spec shadows a platform tool of the same name. ``role`` (set by the gateway
from the credential) and the user the task acts for travel on every tool and memory command, and
a task without a role may call no tool.

A refusal names its rule (``tool.not_allowed``, ``agent.tool_not_allowed``, a blocked topic…).
With ``on_refusal="continue"`` a refused prompt, tool call or answer becomes the step's note and
the task goes on; with ``"fail"`` it ends the task. A refused goal or report always ends it.

A ``budget`` is checked before every model call and after it: the task fails with the reason
(``budget.task_tokens`` / ``budget.task_cost``) at the first call that spends past it, and each
call may produce at most what is left of the token budget.
"""

from __future__ import annotations

import fnmatch
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
from schemas.policy import PolicyEvaluate, PolicyEvaluated, Stage
from schemas.slm import ChatMessage, SlmComplete, SlmCompleted, ToolSpec
from schemas.tasks import AgentTaskInput, AgentTaskResult
from schemas.tools import ToolInvoke, ToolResult

agent_task: Definition[AgentTaskInput] = Definition(
    "agent_task", version=2, input_type=AgentTaskInput
)

Task = Run[AgentTaskInput]
MODEL_RETRY = Retry(initial=0.5, max_attempts=3)
QUICK = Retry(initial=0.2, max_attempts=3)
AGENT_TOOL_NOT_ALLOWED = "agent.tool_not_allowed"
_STEP_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$")


def _allowed(run: Task, name: str) -> bool:
    patterns = run.input.allowed_tools
    return patterns is None or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _platform_tools(run: Task) -> list[ToolSpec]:
    """The platform tools the task may run: those no caller tool of the same name shadows and
    the agent's allow-list admits."""
    callers = {t.name for t in run.input.tools}
    return [t for t in run.input.platform_tools if t.name not in callers and _allowed(run, t.name)]


def _owner(run: Task) -> str:
    """Whom the task works for: the named user, else the user who started it."""
    return run.input.user or run.actor


def _goal(run: Task) -> str:
    return str(run.data.get("goal", run.input.goal))


def _step(run: Task) -> str:
    return str(run.data["plan"][len(run.data["notes"])])


def _check(run: Task, stage: Stage, text: str, then: Any) -> Call:
    return Call(
        PolicyEvaluate(stage=stage, text=text, role=run.input.role or ""),
        then=then,
        timeout=10,
        retry=QUICK,
    )


def _ask(run: Task, system: str, user: str, *, tools: bool = False) -> SlmComplete:
    if run.input.system:
        system = f"{run.input.system}\n\n{system}"
    budget = run.input.budget
    left = None
    if budget is not None and budget.max_tokens is not None:
        left = max(budget.max_tokens - _tokens(run), 1)
    return SlmComplete(
        model=run.input.model,
        messages=[
            ChatMessage(role="system", content=system),
            ChatMessage(role="user", content=user),
        ],
        tools=[*run.input.tools, *_platform_tools(run)] if tools else [],
        user=run.input.user,
        key_id=run.input.key_id,
        max_tokens=left,
    )


def _tokens(run: Task) -> int:
    u = run.data.get("usage", {})
    return int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))


def _account(run: Task, done: SlmCompleted) -> None:
    usage = run.data.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0})
    usage["prompt_tokens"] += done.usage.prompt_tokens
    usage["completion_tokens"] += done.usage.completion_tokens
    run.data["cost_usd"] = run.data.get("cost_usd", 0.0) + done.cost_usd


def over_budget(run: Task, *, before_call: bool) -> str | None:
    """Why the task may not go on, or None: spent past its budget, or (before a model call)
    nothing left of it."""
    budget = run.input.budget
    if budget is None:
        return None
    tokens, cost = _tokens(run), float(run.data.get("cost_usd", 0.0))
    limit = budget.max_tokens
    if limit is not None and (tokens > limit or (before_call and tokens >= limit)):
        return f"budget.task_tokens: the task has used {tokens} tokens of its budget of {limit}"
    spend = budget.max_cost_usd
    if spend is not None and (cost > spend or (before_call and cost >= spend)):
        return f"budget.task_cost: the task has spent ${cost:.6f} of its budget of ${spend:.6f}"
    return None


def _model(run: Task, system: str, user: str, then: Any, *, tools: bool = False) -> Action:
    stop = over_budget(run, before_call=True)
    if stop:
        return Fail(stop)
    return Call(_ask(run, system, user, tools=tools), then=then, timeout=180, retry=MODEL_RETRY)


def _refusal(verdict: PolicyEvaluated) -> str:
    rules = ", ".join(verdict.rule_ids) or "policy"
    return f"refused by policy ({rules}): {'; '.join(verdict.reasons) or verdict.decision}"


def _refused(run: Task, what: str, why: str) -> Action:
    """A refused action of a step: the step's note, or the end of the task, as it asks."""
    text = f"{what} was {why}"
    run.data.setdefault("refusals", []).append(text)
    if run.input.on_refusal == "fail":
        return Fail(text)
    return _keep_note(run, f"{_step(run)}: {text}")


@agent_task.start
def check_goal(run: Task) -> Action:
    return _check(run, "prompt", run.input.goal, goal_checked)


@agent_task.step
def goal_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    if verdict.decision == "deny":
        return Fail(f"the goal was {_refusal(verdict)}")
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        run.data["goal"] = verdict.redacted_text
    return Continue(then=plan)


@agent_task.step
def plan(run: Task) -> Action:
    system = (
        f"You plan research tasks. Answer with at most {run.input.max_steps} numbered steps, "
        "one per line."
    )
    return _model(run, system, _goal(run), planned)


@agent_task.step
def planned(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    stop = over_budget(run, before_call=False)
    if stop:
        return Fail(stop)
    run.data["answer"] = done.message.content or ""
    return _check(run, "answer", run.data["answer"], plan_checked)


@agent_task.step
def plan_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    answer = run.data.pop("answer", "")
    run.data["notes"] = []
    if verdict.decision == "deny":
        why = _refusal(verdict)
        run.data.setdefault("refusals", []).append(f"the plan was {why}")
        if run.input.on_refusal == "fail":
            return Fail(f"the plan was {why}")
        answer = ""  # work on the goal itself
    elif verdict.decision == "redact" and verdict.redacted_text is not None:
        answer = verdict.redacted_text
    lines = [m.group(1).strip() for m in map(_STEP_LINE.match, answer.splitlines()) if m]
    run.data["plan"] = (lines or [_goal(run)])[: max(run.input.max_steps, 1)]
    return Continue(then=work)


@agent_task.step
def work(run: Task) -> Action:
    i = len(run.data["notes"])
    if i >= len(run.data["plan"]):
        return Continue(then=maybe_wait_for_approval)
    step = run.data["plan"][i]
    done_so_far = "\n".join(run.data["notes"]) or "(nothing yet)"
    run.data["prompt"] = f"Goal: {_goal(run)}\nStep {i + 1}: {step}\nNotes so far:\n{done_so_far}"
    return _check(run, "prompt", run.data["prompt"], prompt_checked)


@agent_task.step
def prompt_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    prompt = run.data.pop("prompt")
    if verdict.decision == "deny":
        return _refused(run, "the prompt", _refusal(verdict))
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        prompt = verdict.redacted_text
    system = f"You carry out one step of a research plan for the goal: {_goal(run)}"
    return _model(run, system, prompt, worked, tools=True)


@agent_task.step
def worked(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    stop = over_budget(run, before_call=False)
    if stop:
        return Fail(stop)
    calls = done.message.tool_calls or []
    if not calls:
        run.data["answer"] = done.message.content or ""
        return _check(run, "answer", run.data["answer"], answer_checked)
    call = calls[0]
    run.data["tool"] = call.name
    if call.name in {t.name for t in run.input.tools}:
        return _keep_note(
            run, f"{_step(run)}: {call.name} is not a platform tool of this task; it was not run"
        )
    if not _allowed(run, call.name) or call.name not in {t.name for t in _platform_tools(run)}:
        return _refused(
            run,
            call.name,
            f"refused ({AGENT_TOOL_NOT_ALLOWED}): this agent may call only "
            f"{', '.join(t.name for t in _platform_tools(run)) or 'no tool'}",
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


@agent_task.step
def answer_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    answer = run.data.pop("answer", "")
    if verdict.decision == "deny":
        return _refused(run, "the answer", _refusal(verdict))
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        answer = verdict.redacted_text
    return _keep_note(run, f"{_step(run)}: {answer}")


@agent_task.step
def tool_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    tool = run.data["tool"]
    if verdict.decision == "deny":
        return _refused(run, str(tool), _refusal(verdict))
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


@agent_task.step
def tool_returned(run: Task, result: ToolResult) -> Action:
    tool = run.data.get("tool")
    if result.refused_by is not None:
        return _refused(run, str(tool), f"refused ({result.refused_by}): {result.error}")
    outcome = json.dumps(result.output) if result.ok else f"error: {result.error}"
    return _keep_note(run, f"{_step(run)}: {tool} returned {outcome}")


def _keep_note(run: Task, note: str) -> Action:
    i = len(run.data["notes"])
    if run.input.memory == "none":
        run.data["notes"].append(note)
        return Continue(then=work)
    note_id = f"{run.saga_id}:note{i}"
    run.data["pending_note"] = note
    session = run.saga_id
    if run.input.memory == "run":
        session = run.input.memory_session or run.saga_id
    return Call(
        MemoryAdd(
            id=note_id,
            text=note,
            user=_owner(run),
            session=session,
            metadata={"agent_task": run.saga_id, "step": i},
            caller_role=run.input.role,
        ),
        then=noted,
        timeout=30,
        retry=Retry(initial=0.5, max_attempts=5),
        compensate=MemoryDelete(ids=[note_id], user=_owner(run), caller_role=run.input.role),
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
    run.data["prompt"] = f"Goal: {_goal(run)}\nNotes:\n{notes}\nWrite the final report."
    return _check(run, "prompt", run.data["prompt"], report_prompt_checked)


@agent_task.step
def report_prompt_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    prompt = run.data.pop("prompt")
    if verdict.decision == "deny":
        return Fail(f"the report's prompt was {_refusal(verdict)}")
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        prompt = verdict.redacted_text
    return _model(run, "You write concise research reports from notes.", prompt, reported)


@agent_task.step
def reported(run: Task, done: SlmCompleted) -> Action:
    _account(run, done)
    stop = over_budget(run, before_call=False)
    if stop:
        return Fail(stop)
    run.data["report"] = done.message.content or ""
    return _check(run, "answer", run.data["report"], report_checked)


@agent_task.step
def report_checked(run: Task, verdict: PolicyEvaluated) -> Action:
    if verdict.decision == "deny":
        return Fail(f"the report was {_refusal(verdict)}")
    report = run.data["report"]
    if verdict.decision == "redact" and verdict.redacted_text is not None:
        report = verdict.redacted_text
    u = run.data.get("usage", {})
    return Complete(
        AgentTaskResult(
            report=report,
            plan=run.data["plan"],
            notes=run.data["notes"],
            usage=Usage(
                prompt_tokens=u.get("prompt_tokens", 0),
                completion_tokens=u.get("completion_tokens", 0),
            ),
            cost_usd=run.data.get("cost_usd", 0.0),
            approved_by=run.data.get("approved_by"),
            refusals=run.data.get("refusals", []),
        )
    )
