"""A multi-agent run: several agents toward one goal, each step an ``agent_task`` child saga.

    check the goal and every agent's role (policy) ─deny→ fail at once
      → next wave: the steps whose needs are all done
            ├─ a gated step → wait for the ``gate`` signal ─reject→ fail, compensating
            └─ start them all at once (child sagas), each with its inputs and budget share
      → the wave's outcomes: outputs kept; a failed step fails the run (compensating), a step
        stopped by its budget share stops the run (the run's budget is spent)
      → … until every step is done → store the report in memory → end

Steps run in waves: every step ready at once starts at once (fan-out), and the wave ends when
each of them has (the join). A step's task is given the outputs (reports) of its ``inputs``.

Each child is started with a compensation that deletes its notes, registered as the child ends
with them in place; cancelling the run (or a failure that compensates) cancels the children
still running, waits for them to end (one may complete before its cancel reaches it), and
deletes the notes of those that ended with notes in place in reverse order, the report last
stored first.

The run's budget is shared out: each step of a wave may spend what is left divided by the
wave's size, so the run never spends past it by more than one model call per step. A step
stopped by its share ends the run with ``budget.run_tokens`` / ``budget.run_cost`` and the step
named; what the finished steps produced stays in the run's state.

The caller's ``role`` and ``user`` travel on to every agent, so policy, tools and memory judge
each of its actions for the caller.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sagas.definition import (
    Action,
    Call,
    CallAll,
    Complete,
    Continue,
    Definition,
    Fail,
    Retry,
    Run,
    StartChild,
    StartChildren,
    WaitSignal,
)
from schemas.base import Usage
from schemas.memory import MemoryAdd, MemoryDelete
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from schemas.runs import AgentRunInput, AgentRunResult, RunStep, RunStepState
from schemas.sagas import SagaFinished
from schemas.tasks import AgentTaskInput, AgentTaskResult, Budget

agent_run: Definition[AgentRunInput] = Definition("agent_run", version=1, input_type=AgentRunInput)

Flow = Run[AgentRunInput]
QUICK = Retry(initial=0.2, max_attempts=3)
GATE = "gate"


def _owner(run: Flow) -> str:
    return run.input.user or run.actor


def _steps(run: Flow) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = run.data["steps"]
    return steps


def _tokens(run: Flow) -> int:
    u = run.data.get("usage", {})
    return int(u.get("prompt_tokens", 0)) + int(u.get("completion_tokens", 0))


def over_budget(run: Flow, *, before_wave: bool) -> str | None:
    budget = run.input.budget
    if budget is None:
        return None
    tokens, cost = _tokens(run), float(run.data.get("cost_usd", 0.0))
    limit = budget.max_tokens
    if limit is not None and (tokens > limit or (before_wave and tokens >= limit)):
        return f"budget.run_tokens: the run has used {tokens} tokens of its budget of {limit}"
    spend = budget.max_cost_usd
    if spend is not None and (cost > spend or (before_wave and cost >= spend)):
        return f"budget.run_cost: the run has spent ${cost:.6f} of its budget of ${spend:.6f}"
    return None


def _share(run: Flow, ways: int) -> Budget | None:
    """What each of ``ways`` steps starting together may spend of what is left."""
    budget = run.input.budget
    if budget is None:
        return None
    tokens = None
    if budget.max_tokens is not None:
        tokens = max((budget.max_tokens - _tokens(run)) // ways, 1)
    cost = None
    if budget.max_cost_usd is not None:
        cost = max(budget.max_cost_usd - float(run.data.get("cost_usd", 0.0)), 0.0) / ways
    return Budget(max_tokens=tokens, max_cost_usd=cost)


@agent_run.start
def check_goal(run: Flow) -> Action:
    role = run.input.role or ""
    texts = [run.input.goal, *(a.role for a in run.input.agents if a.role)]
    return CallAll(
        [
            Call(
                PolicyEvaluate(stage="prompt", text=t, role=role),
                then=goal_checked,
                timeout=10,
                retry=QUICK,
            )
            for t in texts
        ],
        then=goal_checked,
    )


@agent_run.step
def goal_checked(run: Flow, verdicts: list[PolicyEvaluated]) -> Action:
    what = ["the goal", *(f"agent {a.name}'s role" for a in run.input.agents if a.role)]
    for label, verdict in zip(what, verdicts, strict=True):
        if verdict.decision == "deny":
            rules = ", ".join(verdict.rule_ids) or "policy"
            return Fail(f"{label} was refused by policy ({rules}): {'; '.join(verdict.reasons)}")
    goal = verdicts[0]
    run.data["goal"] = (
        goal.redacted_text
        if goal.decision == "redact" and goal.redacted_text is not None
        else run.input.goal
    )
    run.data["steps"] = {
        s.id: msgspec.to_builtins(RunStepState(id=s.id, agent=s.agent)) for s in run.input.steps
    }
    run.data["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
    run.data["cost_usd"] = 0.0
    return Continue(then=next_wave)


@agent_run.step
def next_wave(run: Flow) -> Action:
    steps = _steps(run)
    pending = [s for s in run.input.steps if steps[s.id]["state"] in ("pending", "waiting")]
    if not pending:
        return Continue(then=store_report)
    stop = over_budget(run, before_wave=True)
    if stop:
        return Fail(stop)
    ready = [
        s for s in pending if all(steps[n]["state"] == "completed" for n in run.input.needs_of(s))
    ]
    for step in ready:
        if step.gate and steps[step.id]["approved_by"] is None:
            steps[step.id]["state"] = "waiting"
            run.data["gate"] = step.id
            return WaitSignal(GATE, then=gate_decided)
    share = _share(run, len(ready))
    children = []
    for step in ready:
        child_id = f"{run.saga_id}.{step.id}"
        steps[step.id].update(state="running", task_id=child_id)
        children.append(
            StartChild(
                "agent_task",
                _task_input(run, step, share),
                then=wave_done,
                child_id=child_id,
                compensate=_undo_notes(run, step, child_id),
            )
        )
    return StartChildren(children, then=wave_done)


def _task_input(run: Flow, step: RunStep, share: Budget | None) -> AgentTaskInput:
    agent = next(a for a in run.input.agents if a.name == step.agent)
    steps = _steps(run)
    given = [
        f"Input from step {name} ({steps[name]['agent']}):\n{steps[name]['output']}"
        for name in run.input.inputs_of(step)
    ]
    goal = "\n\n".join([step.task, f"The run's goal: {run.data['goal']}", *given])
    return AgentTaskInput(
        goal=goal,
        model=agent.model,
        max_steps=step.max_steps,
        user=run.input.user,
        platform_tools=run.input.platform_tools,
        role=run.input.role,
        key_id=run.input.key_id,
        system=agent.role or None,
        allowed_tools=list(agent.tools),
        budget=share,
        memory=agent.memory,
        memory_session=run.saga_id if agent.memory == "run" else None,
    )


def _undo_notes(run: Flow, step: RunStep, child_id: str) -> MemoryDelete | None:
    """Deletes every note the step's task may have kept (their ids are the task's own)."""
    agent = next(a for a in run.input.agents if a.name == step.agent)
    if agent.memory == "none":
        return None
    return MemoryDelete(
        ids=[f"{child_id}:note{i}" for i in range(step.max_steps)],
        user=_owner(run),
        caller_role=run.input.role,
    )


@agent_run.step
def gate_decided(run: Flow, payload: dict[str, Any] | None) -> Action:
    payload = payload or {}
    step_id = run.data.pop("gate")
    step = _steps(run)[step_id]
    by = str(payload.get("by") or "reviewer")
    if payload.get("approved") is False:
        comment = str(payload.get("comment") or "").strip()
        step.update(
            state="cancelled", error=f"rejected by {by}" + (f": {comment}" if comment else "")
        )
        return Fail(f"the gate before step {step_id} was {step['error']}", compensate=True)
    step.update(state="pending", approved_by=by)
    return Continue(then=next_wave)


@agent_run.step
def wave_done(run: Flow, outcomes: list[SagaFinished]) -> Action:
    steps = _steps(run)
    usage = run.data["usage"]
    stopped: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    for outcome in outcomes:
        step_id = outcome.saga_id.removeprefix(f"{run.saga_id}.")
        step = steps[step_id]
        if outcome.state == "completed" and outcome.result is not None:
            result = msgspec.convert(outcome.result, AgentTaskResult)
            step.update(
                state="completed",
                output=result.report,
                usage=msgspec.to_builtins(result.usage),
                cost_usd=result.cost_usd,
            )
            usage["prompt_tokens"] += result.usage.prompt_tokens
            usage["completion_tokens"] += result.usage.completion_tokens
            run.data["cost_usd"] += result.cost_usd
            continue
        error = outcome.error or outcome.state
        step.update(state="failed" if outcome.state == "failed" else "cancelled", error=error)
        (stopped if error.startswith("budget.task_") else failed).append((step_id, error))
    if failed:
        step_id, error = failed[0]
        return Fail(f"step {step_id} failed: {error}", compensate=True)
    if stopped:
        step_id, error = stopped[0]
        kind = "tokens" if error.startswith("budget.task_tokens") else "cost"
        return Fail(
            f"budget.run_{kind}: the run's budget is spent; step {step_id} stopped at its share "
            f"({error})"
        )
    stop = over_budget(run, before_wave=False)
    if stop:
        return Fail(stop)
    return Continue(then=next_wave)


@agent_run.step
def store_report(run: Flow) -> Action:
    steps = _steps(run)
    names = run.input.report_steps()
    if len(names) == 1:
        report = str(steps[names[0]]["output"] or "")
    else:
        report = "\n\n".join(f"## {n}\n{steps[n]['output'] or ''}" for n in names)
    run.data["report"] = report
    memory_id = f"{run.saga_id}:report"
    return Call(
        MemoryAdd(
            id=memory_id,
            text=report,
            user=_owner(run),
            session=run.saga_id,
            metadata={"agent_run": run.saga_id, "kind": "report"},
            caller_role=run.input.role,
        ),
        then=report_stored,
        timeout=30,
        retry=Retry(initial=0.5, max_attempts=5),
        compensate=MemoryDelete(ids=[memory_id], user=_owner(run), caller_role=run.input.role),
    )


@agent_run.step
def report_stored(run: Flow, added: Any) -> Action:
    u = run.data["usage"]
    return Complete(
        AgentRunResult(
            report=run.data["report"],
            steps=[msgspec.convert(s, RunStepState) for s in _steps(run).values()],
            usage=Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"]),
            cost_usd=run.data["cost_usd"],
            report_memory_id=f"{run.saga_id}:report",
        )
    )
