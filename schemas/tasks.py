"""Agent tasks: long-running "research and write a report" work, as the ``agent_task`` saga."""

import msgspec

from schemas.base import Message, Usage
from schemas.slm import ToolSpec


class AgentTaskInput(Message):
    """What to do. With ``require_approval`` the task waits for an ``approve`` signal
    (payload ``{"approved": true|false, "by": ..., "comment": ...}``) before the final report.

    ``platform_tools`` are registry tools (by registry name) the task may run, each call judged
    for ``role``; ``tools`` are the caller's own specs, which the task never runs. ``role`` is the
    caller's, set by the gateway from the credential; without it no tool runs. ``key_id`` is
    the caller's API key, also set by the gateway, so the task's model calls count against it.
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


class AgentTaskResult(Message):
    report: str
    plan: list[str]
    notes: list[str]
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    approved_by: str | None = None


# The signals an agent task waits for: ``approve`` (with ``require_approval``).
AGENT_TASK_SIGNALS = ("approve",)
