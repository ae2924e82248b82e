"""Anthropic's SSE events for a streamed turn, in their order and with their block indices."""

from __future__ import annotations

import json
from typing import Any

from gateway.anthropic_stream import AnthropicEvents
from gateway.errors import ApiError
from schemas.base import Usage
from schemas.chat import ChatTurnResult
from schemas.slm import ChatMessage, ToolCall

CALL = ToolCall(id="toolu_1", name="calculator", arguments='{"expression": "6*7"}')


def parsed(lines: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in lines:
        head, data = line.decode().strip().split("\n")
        name = head.removeprefix("event: ")
        body = json.loads(data.removeprefix("data: "))
        assert body["type"] == name
        out.append((name, body))
    return out


def result(finish_reason: str, stop_sequence: str | None = None) -> ChatTurnResult:
    return ChatTurnResult(
        message=ChatMessage(role="assistant", content="x"),
        finish_reason=finish_reason,
        model="m",
        usage=Usage(prompt_tokens=12, completion_tokens=4),
        stop_sequence=stop_sequence,
    )


def test_text_then_a_tool_call_are_two_blocks_with_a_ping_after_the_first_opens() -> None:
    out = AnthropicEvents("t1", "m")
    lines = [*out.opening(), *out.text("Let me "), *out.text("compute.")]
    lines += [*out.tool_call(0, CALL), *out.ending(result("tool_calls"))]
    events = parsed(lines)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["id"] == "msg_t1"
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[6][1]["index"] == 1 and events[6][1]["content_block"]["type"] == "tool_use"
    delta = events[7][1]["delta"]
    assert delta["type"] == "input_json_delta"
    assert json.loads(delta["partial_json"]) == {"expression": "6*7"}
    assert events[9][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[9][1]["usage"] == {"input_tokens": 12, "output_tokens": 4}


def test_a_turn_without_blocks_still_pings_before_its_end() -> None:
    out = AnthropicEvents("t2", "m")
    events = parsed([*out.opening(), *out.ending(result("length"))])
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1]["delta"]["stop_reason"] == "max_tokens"


def test_a_stop_sequence_is_named_in_the_message_delta() -> None:
    out = AnthropicEvents("t3", "m")
    [*_, (name, delta), _] = parsed([*out.text("a"), *out.ending(result("stop", "END"))])
    assert name == "message_delta"
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_an_error_is_an_error_event_in_anthropics_shape() -> None:
    [(name, body)] = parsed([AnthropicEvents("t4", "m").error(ApiError(504, "Too slow."))])
    assert name == "error"
    assert body["error"] == {"type": "timeout_error", "message": "Too slow."}
