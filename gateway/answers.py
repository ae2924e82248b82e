"""A turn's result as OpenAI's wire format: the ``chat.completion`` body and the
``chat.completion.chunk`` lines of a stream, encoded by msgspec.

These are the gateway's hottest bytes — one body per completion, one chunk per token delta — and
msgspec encodes a Struct several times faster than pydantic validates and dumps the same model.
The pydantic models in ``gateway.openai_bodies`` still describe these bodies in the OpenAPI
document; the field names and order here are theirs, so the JSON is the same.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas.chat import ChatTurnResult
from schemas.slm import ToolCall


class FunctionOut(msgspec.Struct, kw_only=True):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionOut


class MessageOut(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    refusal: None = None


class ChoiceOut(msgspec.Struct, kw_only=True):
    index: int = 0
    message: MessageOut
    finish_reason: str
    logprobs: dict[str, Any] | None = None


class UsageOut(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut
    system_fingerprint: None = None
    # The hash of the tenant constitution the turn was judged under (absent when unjudged).
    constitution: str | msgspec.UnsetType = msgspec.UNSET


class ChunkChoiceOut(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: dict[str, Any]
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChunkOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChunkChoiceOut]
    # Present (null until the last chunk) only when the caller asked for usage.
    usage: UsageOut | msgspec.UnsetType | None = msgspec.UNSET
    # On the chunk with the finish reason: the constitution the turn was judged under.
    constitution: str | msgspec.UnsetType = msgspec.UNSET


_encode = msgspec.json.Encoder().encode


def completion_id(turn_id: str) -> str:
    return f"chatcmpl-{turn_id}"


def tool_calls_out(calls: list[ToolCall] | None) -> list[ToolCallOut] | None:
    if not calls:
        return None
    return [
        ToolCallOut(id=c.id, function=FunctionOut(name=c.name, arguments=c.arguments))
        for c in calls
    ]


def usage_out(result: ChatTurnResult) -> UsageOut:
    u = result.usage
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )


def completion(result: ChatTurnResult, turn_id: str, model: str) -> CompletionOut:
    message = MessageOut(
        content=result.message.content, tool_calls=tool_calls_out(result.message.tool_calls)
    )
    return CompletionOut(
        id=completion_id(turn_id),
        created=int(time.time()),
        model=result.model or model,
        choices=[
            ChoiceOut(message=message, finish_reason=result.finish_reason, logprobs=result.logprobs)
        ],
        usage=usage_out(result),
        constitution=result.constitution or msgspec.UNSET,
    )


def completion_json(result: ChatTurnResult, turn_id: str, model: str) -> bytes:
    return _encode(completion(result, turn_id, model))


class Chunks:
    """The SSE lines of one streamed completion; every chunk names the same id and time."""

    def __init__(self, turn_id: str, model: str, *, include_usage: bool) -> None:
        self._id = completion_id(turn_id)
        self._created = int(time.time())
        self._model = model
        self._usage: UsageOut | msgspec.UnsetType | None = None if include_usage else msgspec.UNSET

    def delta(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        constitution: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return sse(
            ChunkOut(
                id=self._id,
                created=self._created,
                model=self._model,
                choices=[
                    ChunkChoiceOut(delta=delta, finish_reason=finish_reason, logprobs=logprobs)
                ],
                usage=self._usage,
                constitution=constitution or msgspec.UNSET,
            )
        )

    def tool_call(self, index: int, call: ToolCall) -> bytes:
        return self.delta(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ]
            }
        )

    def usage(self, result: ChatTurnResult) -> bytes:
        """The last chunk of a stream that asked for usage: no choices, the turn's usage."""
        return sse(
            ChunkOut(
                id=self._id,
                created=self._created,
                model=self._model,
                choices=[],
                usage=usage_out(result),
            )
        )


def sse(body: msgspec.Struct | dict[str, Any]) -> bytes:
    return b"data: " + _encode(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"
