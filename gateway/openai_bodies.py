"""Request and response bodies of the OpenAI-compatible routes, as pydantic models.

They exist for FastAPI: validation with a ``param`` in every error, and an accurate OpenAPI
document. Unknown request fields are ignored, as OpenAI's own clients expect of servers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Body):
    # Optional here so a part without it is refused naming the part (gateway.chat_turns).
    url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: ImageUrl | None = None


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class FunctionDefinition(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(_Body):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatCompletionRequest(_Body):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "soma-local-dev",
                    "messages": [
                        {"role": "system", "content": "You answer in one sentence."},
                        {"role": "user", "content": "What is NATS JetStream?"},
                    ],
                    "temperature": 0.2,
                    "session": "support-42",
                }
            ]
        },
    )
    model: str = Field(min_length=1, description="A model of `GET /v1/models` (kind `chat`).")
    messages: list[ChatMessageIn] = Field(
        min_length=1, description="The conversation so far, oldest first."
    )
    tools: list[ToolIn] | None = Field(
        default=None,
        max_length=128,
        description="Functions the model may call; the calls come back to you to run.",
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None, description="Whether the model must, may or must not call a tool."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Sampling temperature; lower is more focused."
    )
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int | None = Field(
        default=None, ge=1, description="At most this many completion tokens."
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="The same as max_tokens (OpenAI's newer name)."
    )
    response_format: ResponseFormat | None = Field(
        default=None, description="`json_object` or `json_schema` asks for JSON output."
    )
    stop: str | list[str] | None = Field(
        default=None, description="Text at which the completion stops."
    )
    seed: int | None = Field(default=None, description="For repeatable sampling, where served.")
    user: str | None = Field(default=None, description="Your end user's id, for your records.")
    n: int | None = Field(default=None, ge=1, description="Only 1 is served; more is a 400.")
    logprobs: bool | None = Field(
        default=None, description="Return token log probabilities, where the provider does."
    )
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="How many alternatives per token with logprobs."
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="false: at most one tool call per answer."
    )
    stream: bool | None = Field(
        default=False, description="Send the answer as server-sent events as it is written."
    )
    stream_options: StreamOptions | None = Field(
        default=None, description="`include_usage`: a last chunk with the token counts."
    )
    # Soma extensions: a conversation id for memory, and whether to use memory at all.
    session: str | None = Field(
        default=None,
        max_length=200,
        description="Soma: a conversation id; the turn recalls and keeps memories under it.",
    )
    use_memory: bool = Field(
        default=True, description="Soma: false leaves memory out of this turn."
    )


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: UsageOut
    system_fingerprint: str | None = None
    constitution: str | None = Field(
        default=None,
        description="The content hash of the tenant constitution the turn was judged under "
        "(also the Soma-Constitution header); absent when policy did not judge the turn.",
    )


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, str] | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` line of a streamed completion (``text/event-stream``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    system_fingerprint: str | None = None


class EmbeddingRequest(_Body):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "hashed-ngrams-384", "input": ["durable execution", "event sourcing"]}
            ]
        },
    )
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, or token ids (a list, or a list of lists)."
    )
    model: str = Field(min_length=1, description="A model of `GET /v1/models` (kind `embedding`).")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="Vectors as float lists or as base64 of float32s."
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Cut the vectors to this many dimensions."
    )
    user: str | None = Field(default=None, description="Your end user's id, for your records.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["chat", "embedding"] = Field(
        default="chat",
        description="`chat` for /v1/chat/completions and /v1/messages, "
        "`embedding` for /v1/embeddings.",
    )


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request"),
        (401, "Missing or invalid credentials"),
        (403, "Role or scope does not allow this"),
        (404, "Not found (or another tenant's)"),
        (413, "Body too large"),
        (429, "Rate limit reached; see Retry-After"),
        (503, "A backend service did not answer"),
    )
}
