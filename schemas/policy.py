"""Policy: every prompt, tool call and answer is judged before it goes on."""

from typing import Any, Literal

from schemas.base import Extensible, Message

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


class JudgeVerdict(Extensible):
    """What the judge model said about the principles, or why it said nothing."""

    model: str
    outcome: Literal["kept", "violated", "unavailable"]
    violated: list[str] = []
    reasons: list[str] = []
    cached: bool = False


class PolicyEvaluated(Extensible):
    """A decision, itself part of the audit trail. Precedence: deny > redact > flag > allow."""

    decision_id: str
    decision: Decision
    stage: Stage
    reasons: list[str] = []
    rule_ids: list[str] = []
    redacted_text: str | None = None
    spans: list[Span] = []
    policy_version: str = ""
    # The content hash of the tenant's constitution the decision was made under (sha256:…).
    constitution: str = ""
    # The model's verdict on the principles, where the tenant has a judge for this stage.
    judge: JudgeVerdict | None = None


class PolicyConstitutionChanged(Extensible):
    """A tenant's constitution in force changed: the next decision is made under ``new_hash``."""

    new_hash: str
    old_hash: str = ""
    version: str = ""
    summary: str = ""
    principles: list[str] = []


class PolicyConstitutionRefused(Extensible):
    """A tenant's new constitution was not loaded (unsigned or badly signed where a signature is
    required); ``in_force`` names the one that still applies, empty when none does."""

    reason: str
    in_force: str = ""
