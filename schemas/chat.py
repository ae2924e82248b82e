"""The chat turn: what the gateway asks of the ``chat_turn`` saga, and what it answers."""

from typing import Any

import msgspec

from schemas.base import Extensible, Message, Usage
from schemas.slm import ChatMessage, ToolSpec


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
