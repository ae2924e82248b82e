"""Agent tasks: long-running "research and write a report" work, as the ``agent_task`` saga."""

from typing import Annotated, Literal

import msgspec

from schemas.base import Message, Usage
from schemas.slm import ToolSpec

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
NonNegativeCost = Annotated[float, msgspec.Meta(ge=0)]


class Budget(Message):
    """What a task (or a run) may spend: total tokens (prompt and completion) and cost in USD
    over all its model calls. ``None``: no limit. Work stops at the first model call that
    spends past it, with the reason (rule ``budget.task_tokens``/``budget.task_cost``, or
    ``budget.run_tokens``/``budget.run_cost`` for a run)."""

    max_tokens: NonNegative | None = None
    max_cost_usd: NonNegativeCost | None = None


class AgentTaskInput(Message):
    """What to do. With ``require_approval`` the task waits for an ``approve`` signal
    (payload ``{"approved": true|false, "by": ..., "comment": ...}``) before the final report.

    ``platform_tools`` are registry tools (by registry name) the task may run, each call judged
    for ``role``; ``tools`` are the caller's own specs, which the task never runs. ``role`` is the
    caller's, set by the gateway from the credential; without it no tool runs. ``key_id`` is
    the caller's API key, also set by the gateway, so the task's model calls count against it.

    Policy judges the goal before anything runs (a refused goal fails the task at once), and then
    every prompt, tool call, answer and the report. ``on_refusal`` says what a refused prompt,
    tool call or answer of a step does: ``continue`` notes the refusal (with the rule) as that
    step's outcome, ``fail`` ends the task with it. A refused report always ends the task.

    Used as one agent of a run (``agent_run``): ``system`` is the agent's role, ``allowed_tools``
    its tool allow-list (glob patterns over the platform tools; ``None`` allows them all) and
    ``memory`` where its notes go: ``task`` (its own session), ``run`` (the session
    ``memory_session``, shared by the run's agents) or ``none`` (kept only in the task).
    """

    goal: str
    model: str = "soma-local-dev"
    max_steps: int = 3
    tools: list[ToolSpec] = []
    require_approval: bool = False
    approval_timeout: float | None = None
    user: str | None = None
    platform_tools: list[ToolSpec] = []
    role: str | None = None
    key_id: str | None = None
    system: str | None = None
    allowed_tools: list[str] | None = None
    on_refusal: Literal["continue", "fail"] = "continue"
    budget: Budget | None = None
    memory: Literal["task", "run", "none"] = "task"
    memory_session: str | None = None


class AgentTaskResult(Message):
    report: str
    plan: list[str]
    notes: list[str]
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    approved_by: str | None = None
    # What policy (or the agent's allow-list) refused along the way, each with its rule.
    refusals: list[str] = []


# The signals an agent task waits for: ``approve`` (with ``require_approval``).
AGENT_TASK_SIGNALS = ("approve",)
