"""SLM: language-model completions, routed by model name, streamed as deltas."""

from typing import Any

import msgspec

from schemas.base import Message, Usage


class ToolCall(Message):
    id: str
    name: str
    arguments: str = "{}"


class ImagePart(Message):
    """An image in a user message: an ``https`` URL or a ``data:`` URL with the bytes."""

    url: str
    detail: str | None = None


class ChatMessage(Message):
    """One message. ``content`` is its whole text, what policy and memory read; ``images`` are
    the pictures that came with it, passed to models that accept images."""

    role: str
    content: str | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    images: list[ImagePart] | None = None


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
    # Which of the request's ``stop`` sequences ended the text, when the provider says so.
    stop_sequence: str | None = None
    # The tokens' log probabilities in OpenAI's shape (``{"content": [...]}``), when asked for
    # and the provider reports them.
    logprobs: dict[str, Any] | None = None


class SlmDelta(Message):
    """One streamed piece of a completion (ephemeral, core NATS ``soma.stream.<correlation>``)."""

    index: int
    content: str = ""
    tool_call: ToolCall | None = None
    done: bool = False
    finish_reason: str | None = None
    error: str | None = None
