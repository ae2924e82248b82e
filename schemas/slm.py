"""SLM: language-model completions, routed by model name, streamed as deltas."""

from typing import Any

import msgspec

from schemas.base import Message, Usage


class ToolCall(Message):
    id: str
    name: str
    arguments: str = "{}"


class ChatMessage(Message):
    role: str
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolSpec(Message):
    """A tool the model may call, as in OpenAI's ``tools`` parameter (function type)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = {}


class SlmComplete(Message):
    """Ask for one completion. With ``stream_subject`` set, deltas go there on core NATS."""

    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = []
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    stream_subject: str | None = None
    # The API key the turn came in with, echoed on the reply so usage can be reported per key.
    key_id: str | None = None


class SlmCompleted(Message):
    model: str
    provider: str
    message: ChatMessage
    finish_reason: str = "stop"
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    key_id: str | None = None


class SlmDelta(Message):
    """One streamed piece of a completion (ephemeral, core NATS ``soma.stream.<correlation>``)."""

    index: int
    content: str = ""
    tool_call: ToolCall | None = None
    done: bool = False
    finish_reason: str | None = None
    error: str | None = None
