"""A streamed turn as Anthropic's SSE events, in their order: ``message_start``; per content
block ``content_block_start``, its deltas (``text_delta`` or ``input_json_delta``) and
``content_block_stop``; a ``ping`` after the first block opens; then ``message_delta`` with the
stop reason and usage, and ``message_stop``. ``gateway.streaming.ChatStream`` drives it, as it
drives OpenAI's chunks, so deltas and the turn's final result are reconciled the same way.

The input tokens are known only when the turn ends (memory may add context, a platform tool
round adds its results): ``message_start`` carries none, and ``message_delta`` carries the
turn's input and output tokens, which Anthropic's SDKs take into the final message.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.anthropic_errors import error_body
from gateway.anthropic_turns import message_id, stop_reason, tool_input
from gateway.errors import ApiError
from schemas.chat import ChatTurnResult
from schemas.slm import ToolCall


def event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": name, **payload}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


class AnthropicEvents:
    """The events of one streamed message; blocks are numbered in the order they open."""

    def __init__(self, turn_id: str, model: str) -> None:
        self._id = message_id(turn_id)
        self._model = model
        self._blocks = 0
        self._text_open = False
        self._pinged = False

    def opening(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [event("message_start", {"message": message})]

    def _open(self, block: dict[str, Any]) -> list[bytes]:
        out = [event("content_block_start", {"index": self._blocks, "content_block": block})]
        self._blocks += 1
        if not self._pinged:
            self._pinged = True
            out.append(event("ping", {}))
        return out

    def _close_text(self) -> list[bytes]:
        if not self._text_open:
            return []
        self._text_open = False
        return [event("content_block_stop", {"index": self._blocks - 1})]

    def text(self, piece: str) -> list[bytes]:
        out = []
        if not self._text_open:
            out += self._open({"type": "text", "text": ""})
            self._text_open = True
        delta = {"type": "text_delta", "text": piece}
        out.append(event("content_block_delta", {"index": self._blocks - 1, "delta": delta}))
        return out

    def tool_call(self, index: int, call: ToolCall) -> list[bytes]:
        out = self._close_text()
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        out += self._open(block)
        at = self._blocks - 1
        arguments = json.dumps(tool_input(call), separators=(",", ":"))
        delta = {"type": "input_json_delta", "partial_json": arguments}
        out.append(event("content_block_delta", {"index": at, "delta": delta}))
        out.append(event("content_block_stop", {"index": at}))
        return out

    def ending(self, result: ChatTurnResult) -> list[bytes]:
        out = self._close_text()
        if not self._pinged:
            self._pinged = True
            out.append(event("ping", {}))
        sequence = result.stop_sequence if result.finish_reason == "stop" else None
        out.append(
            event(
                "message_delta",
                {
                    "delta": {"stop_reason": stop_reason(result), "stop_sequence": sequence},
                    "usage": {
                        "input_tokens": result.usage.prompt_tokens,
                        "output_tokens": result.usage.completion_tokens,
                    },
                },
            )
        )
        out.append(event("message_stop", {}))
        return out

    def error(self, error: ApiError) -> bytes:
        return event("error", {"error": error_body(error)["error"]})

    def keepalive(self) -> bytes:
        return event("ping", {})
