"""Policy: every prompt, tool call and answer is judged before it goes on."""

from typing import Any, Literal

from schemas.base import Message

Stage = Literal["prompt", "tool_call", "answer"]
Decision = Literal["allow", "deny", "redact", "flag"]


class Span(Message):
    start: int
    end: int
    kind: str


class PolicyEvaluate(Message):
    """Judge a text (and, for a tool call, the tool and its arguments) for one tenant."""

    stage: Stage
    text: str = ""
    role: str = "user"
    key_id: str | None = None
    tool_name: str | None = None
    tool_arguments: dict[str, Any] | None = None
    tokens_requested: int = 0


class PolicyEvaluated(Message):
    """A decision, itself part of the audit trail. Precedence: deny > redact > flag > allow."""

    decision_id: str
    decision: Decision
    stage: Stage
    reasons: list[str] = []
    rule_ids: list[str] = []
    redacted_text: str | None = None
    spans: list[Span] = []
    policy_version: str = ""
