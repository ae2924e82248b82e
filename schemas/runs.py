"""Multi-agent runs: several agents toward one goal, as the ``agent_run`` saga.

A run definition names its agents and a plan of steps. Each step is one agent's task (an
``agent_task`` child saga); ``needs`` orders the steps and ``inputs`` says whose output the step
is given (by default, that of every step it needs). The plan is

- ``sequential``: each step needs the one before it (hand-offs, in the order written);
- ``parallel`` or ``dag``: a step waits only for what it ``needs``, so steps with nothing between
  them run at once (fan-out) and a step that needs several joins them.

A step with ``gate`` waits for a person's approval (the ``gate`` signal) before it starts. The
run's report is the output of ``report_step``, else of the steps no other step needs.

A definition is checked as it is decoded: an unknown agent or step, a cycle, an input the step
could not have (not upstream of it) or a duplicate name is refused with the place named.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.base import Message, Usage
from schemas.slm import ToolSpec
from schemas.tasks import Budget

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
MemoryScope = Literal["task", "run", "none"]
StepState = Literal["pending", "waiting", "running", "completed", "failed", "cancelled"]


class InvalidRun(ValueError):
    """A run definition that cannot run; the message names the place and what to change."""


class AgentSpec(Message):
    """One agent: its role (the system prompt it works under), model, the platform tools it may
    call (glob patterns; none when empty) and where its notes are kept."""

    name: Name
    role: str = ""
    model: str = "soma-local-dev"
    tools: list[str] = []
    memory: MemoryScope = "task"


class RunStep(Message):
    """One agent's piece of the work: ``task`` in plain words, after the steps it ``needs``."""

    id: Name
    agent: str
    task: str
    needs: list[str] = []
    inputs: list[str] | None = None
    gate: bool = False
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=10)] = 2


class AgentRunInput(Message):
    """A run definition, as sent to ``POST /v1/runs`` (JSON or YAML) or ``soma saga start``.

    ``role``, ``user`` and ``key_id`` are the caller's (the gateway sets role and key from the
    credential); every agent acts with them, so policy, tools and memory hold each agent to the
    caller's grants and its model calls count against the caller's key.
    """

    goal: str
    agents: list[AgentSpec]
    steps: list[RunStep]
    mode: Literal["sequential", "parallel", "dag"] = "dag"
    report_step: str | None = None
    budget: Budget | None = None
    platform_tools: list[ToolSpec] = []
    role: str | None = None
    user: str | None = None
    key_id: str | None = None

    def __post_init__(self) -> None:
        check(self)

    def needs_of(self, step: RunStep) -> list[str]:
        """What ``step`` waits for: its ``needs``, and in a sequential plan the step before."""
        needs = list(step.needs)
        if self.mode == "sequential":
            index = next(i for i, s in enumerate(self.steps) if s.id == step.id)
            if index > 0 and self.steps[index - 1].id not in needs:
                needs.append(self.steps[index - 1].id)
        return needs

    def inputs_of(self, step: RunStep) -> list[str]:
        return list(step.inputs) if step.inputs is not None else self.needs_of(step)

    def report_steps(self) -> list[str]:
        """Whose output is the run's report: ``report_step``, else every step none needs."""
        if self.report_step:
            return [self.report_step]
        needed = {n for s in self.steps for n in self.needs_of(s)}
        return [s.id for s in self.steps if s.id not in needed]


def check(run: AgentRunInput) -> None:
    """Raise ``InvalidRun`` naming the first problem of ``run``."""
    if not run.goal.strip():
        raise InvalidRun("goal: give the run a goal")
    if not run.agents:
        raise InvalidRun("agents: name at least one agent")
    if not run.steps:
        raise InvalidRun("steps: give the plan at least one step")
    _unique([a.name for a in run.agents], "agents", "agent name")
    _unique([s.id for s in run.steps], "steps", "step id")
    agents = {a.name for a in run.agents}
    ids = [s.id for s in run.steps]
    for i, step in enumerate(run.steps):
        if step.agent not in agents:
            known = ", ".join(sorted(agents))
            raise InvalidRun(f"steps[{i}].agent: unknown agent {step.agent!r} (agents: {known})")
        for j, need in enumerate(step.needs):
            if need not in ids:
                raise InvalidRun(f"steps[{i}].needs[{j}]: unknown step {need!r}")
            if need == step.id:
                raise InvalidRun(f"steps[{i}].needs[{j}]: step {step.id!r} cannot need itself")
    cycle = _cycle(run)
    if cycle:
        raise InvalidRun(f"steps: the plan has a cycle: {' -> '.join(cycle)}")
    for i, step in enumerate(run.steps):
        upstream = _upstream(run, step.id)
        for j, name in enumerate(step.inputs or []):
            if name not in ids:
                raise InvalidRun(f"steps[{i}].inputs[{j}]: missing input: no step {name!r}")
            if name not in upstream:
                raise InvalidRun(
                    f"steps[{i}].inputs[{j}]: missing input: {name!r} does not run before "
                    f"{step.id!r}; add it to needs"
                )
    if run.report_step is not None and run.report_step not in ids:
        raise InvalidRun(f"report_step: unknown step {run.report_step!r}")


def _unique(names: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise InvalidRun(f"{where}[{i}]: duplicate {what} {name!r}")
        seen.add(name)


def _cycle(run: AgentRunInput) -> list[str]:
    """A cycle of ``needs`` as the path that closes it, or [] when there is none."""
    needs = {s.id: run.needs_of(s) for s in run.steps}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for need in needs[node]:
            if state.get(need) == 1:
                return [*path[path.index(need) :], need]
            if need not in state:
                found = visit(need)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for step in run.steps:
        if step.id not in state:
            found = visit(step.id)
            if found:
                return found
    return []


def _upstream(run: AgentRunInput, step_id: str) -> set[str]:
    needs = {s.id: run.needs_of(s) for s in run.steps}
    seen: set[str] = set()
    todo = list(needs[step_id])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(needs[node])
    return seen


class RunStepState(Message):
    """Where one step of a run is: its state, child task, output and spend."""

    id: str
    agent: str
    state: StepState = "pending"
    task_id: str | None = None
    output: str | None = None
    error: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    approved_by: str | None = None


class AgentRunResult(Message):
    report: str
    steps: list[RunStepState]
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    report_memory_id: str | None = None


def decode_run(raw: dict[str, Any]) -> AgentRunInput:
    """A run definition from its JSON form; ``msgspec.ValidationError`` names what is wrong."""
    return msgspec.convert(raw, AgentRunInput)
