"""Request and response bodies of the Anthropic Messages routes (``/v1/messages``), as pydantic
models for validation and the OpenAPI document.

Content blocks are one model with the fields of every block type rather than a union per type:
a block of a type Soma does not carry is then refused by ``gateway.anthropic_turns`` with a
message naming it, instead of a union's list of every type it failed to match.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageSource(_Body):
    """``base64`` with ``media_type`` and ``data``, or ``url`` with ``url``."""

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ContentBlock(_Body):
    """One block of a message: ``text``, ``image``, ``tool_use`` or ``tool_result``."""

    type: str
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool | None = None


class MessageParam(_Body):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class TextBlockParam(_Body):
    type: Literal["text"] = "text"
    text: str


class ToolParam(_Body):
    """A client tool. Anthropic's server tools (with a versioned ``type``) are not offered."""

    type: str | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=dict)


class ToolChoice(_Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Body):
    user_id: str | None = Field(default=None, max_length=256)


_MESSAGES_EXAMPLE: JsonDict = {
    "model": "soma-local-dev",
    "max_tokens": 256,
    "system": "You answer in one sentence.",
    "messages": [{"role": "user", "content": "What is a saga?"}],
}


class MessagesRequest(_Body):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [_MESSAGES_EXAMPLE]})
    model: str = Field(min_length=1, description="A model of `GET /v1/models` (kind `chat`).")
    messages: list[MessageParam] = Field(
        min_length=1, description="The conversation so far, user and assistant turns in order."
    )
    max_tokens: int = Field(ge=1, description="At most this many output tokens.")
    system: str | list[TextBlockParam] | None = Field(
        default=None, description="The system prompt, as text or text blocks."
    )
    stop_sequences: list[str] | None = Field(
        default=None, description="Text at which the answer stops."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=1, description="Sampling temperature; lower is more focused."
    )
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(
        default=None, ge=0, description="Sample only from the k likeliest tokens."
    )
    tools: list[ToolParam] | None = Field(
        default=None,
        max_length=128,
        description="Client tools the model may call; the calls come back to you to run.",
    )
    tool_choice: ToolChoice | None = Field(
        default=None, description="`auto`, `any`, `tool` (with `name`) or `none`."
    )
    metadata: Metadata | None = Field(
        default=None, description="`user_id`: your end user's id, for your records."
    )
    stream: bool = Field(default=False, description="Send the answer as server-sent events.")
    # Soma extensions, as on chat completions: a conversation id for memory, and whether to
    # use memory at all.
    session: str | None = Field(
        default=None,
        max_length=200,
        description="Soma: a conversation id; the turn recalls and keeps memories under it.",
    )
    use_memory: bool = Field(
        default=True, description="Soma: false leaves memory out of this turn."
    )


class CountTokensRequest(_Body):
    """What ``/v1/messages/count_tokens`` counts: a message request without ``max_tokens``."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [{k: v for k, v in _MESSAGES_EXAMPLE.items() if k != "max_tokens"}]
        },
    )
    model: str = Field(min_length=1, description="A model of `GET /v1/models` (kind `chat`).")
    messages: list[MessageParam] = Field(
        min_length=1, description="The conversation to count, as for /v1/messages."
    )
    system: str | list[TextBlockParam] | None = Field(
        default=None, description="The system prompt, as text or text blocks."
    )
    tools: list[ToolParam] | None = Field(
        default=None, max_length=128, description="Client tools, counted with their schemas."
    )
    tool_choice: ToolChoice | None = Field(
        default=None, description="As for /v1/messages; counted, not used."
    )


class TokenCount(BaseModel):
    input_tokens: int


class ResponseBlock(BaseModel):
    type: Literal["text", "tool_use"]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"] | None
    stop_sequence: str | None = None
    usage: MessageUsage


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse, "description": description}
    for status, description in (
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error: an unknown model, or one you may not use"),
        (413, "request_too_large"),
        (429, "rate_limit_error; see retry-after"),
        (503, "overloaded_error: a backend service did not answer"),
    )
}
