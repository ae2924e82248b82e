"""The chat turn: what the gateway asks of the ``chat_turn`` saga, and what it answers."""

from typing import Any, Literal

import msgspec

from schemas.base import Extensible, Message, Usage
from schemas.common import FailureCode
from schemas.memory import MemoryRecalled
from schemas.policy import PolicyEvaluated
from schemas.slm import ChatMessage, ToolSpec

# How much of the recalled memories a turn tells the model, in characters.
MEMORY_BUDGET_CHARS = 2000


class ChatTurnInput(Message):
    """One OpenAI-style chat request, as the ``chat_turn`` saga's input.

    ``tools`` are the caller's: calls to them end the turn with ``finish_reason="tool_calls"``.
    Deltas go to core NATS ``soma.stream.<correlation id>`` when ``stream`` is true.
    """

    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = []
    tool_choice: str | dict[str, Any] | None = None
    # False asks for at most one tool call per answer, from providers that can be told so.
    parallel_tool_calls: bool | None = None
    # Token log probabilities, from providers that report them (OpenAI-compatible ones).
    logprobs: bool | None = None
    top_logprobs: int | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    session: str | None = None
    stream: bool = False
    role: str = "user"
    key_id: str | None = None
    use_memory: bool = True
    use_policy: bool = True
    # Registry tools the tenant enabled for this caller: offered to the model, run in the turn.
    platform_tools: list[ToolSpec] = []
    max_tool_rounds: int = 4


class ChatTurnFinished(Message):
    """A chat turn that ran without a saga (a direct turn) ended: the end its trail would
    otherwise have from ``sagas.finished``, so analytics counts it as a ``chat_turn`` run.

    ``failed`` is a turn whose caller had an error; a policy refusal is an answer
    (``content_filter``) and counts as ``completed``. ``started_at`` is when its first commands
    were sent (epoch seconds); the envelope's timestamp is its end.
    """

    state: Literal["completed", "failed"]
    started_at: float
    turn_type: str = "chat_turn"
    error: str | None = None
    # Why it failed, when a command's refusal failed it (its ``CommandFailed.code``).
    error_code: FailureCode | None = None


class PolicyVerdict(Extensible):
    decision: str
    reasons: list[str] = []
    rule_ids: list[str] = []
    stage: str = "prompt"
    constitution: str = ""


class ChatTurnResult(Extensible):
    """The answer. A policy denial has ``finish_reason="content_filter"`` and ``policy`` set;
    ``constitution`` names the hash of the tenant constitution the turn was judged under."""

    message: ChatMessage
    finish_reason: str
    model: str
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    policy: PolicyVerdict | None = None
    constitution: str | None = None
    # Which ``stop`` sequence ended the answer, when the model's provider says so.
    stop_sequence: str | None = None
    # The answer's token log probabilities (OpenAI's ``logprobs`` object), when asked for.
    logprobs: dict[str, Any] | None = None


# What a turn makes of its messages and its checks' answers, whichever runs it: the
# ``chat_turn`` saga or a gateway's direct turn. One definition, so both tell the model and the
# caller the same.


def last_user_text(messages: list[ChatMessage]) -> str:
    """What the caller said last: the text a turn checks, recalls on and stores."""
    for m in reversed(messages):
        if m.role == "user" and m.content:
            return m.content
    return ""


def with_last_user_text(messages: list[ChatMessage], text: str) -> list[ChatMessage]:
    """``messages`` with what the caller said last replaced by ``text`` (its redaction)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].role == "user" and out[i].content:
            out[i] = msgspec.structs.replace(out[i], content=text)
            break
    return out


def memory_context(recalled: MemoryRecalled) -> str | None:
    """What the model is told of the recalled memories, best first, within
    ``MEMORY_BUDGET_CHARS``: a system message before the conversation. None: nothing to tell."""
    lines, used = [], 0
    for item in recalled.items:
        if used + len(item.text) > MEMORY_BUDGET_CHARS:
            break
        lines.append(f"- {item.text}")
        used += len(item.text)
    return "Relevant memories:\n" + "\n".join(lines) if lines else None


def verdict_of(v: PolicyEvaluated) -> PolicyVerdict:
    return PolicyVerdict(
        decision=v.decision,
        reasons=v.reasons,
        rule_ids=v.rule_ids,
        stage=v.stage,
        constitution=v.constitution,
    )


def refusal(
    model: str, v: PolicyEvaluated, usage: Usage, cost_usd: float, constitution: str | None
) -> ChatTurnResult:
    """The turn's end when a check denies: ``content_filter``, with the policy's reasons."""
    text = "This request was refused by policy: " + ("; ".join(v.reasons) or v.decision)
    return ChatTurnResult(
        message=ChatMessage(role="assistant", content=text),
        finish_reason="content_filter",
        model=model,
        usage=usage,
        cost_usd=cost_usd,
        policy=verdict_of(v),
        constitution=v.constitution or constitution,
    )
