"""Approximate token counts, for the local model and for servers that report no usage.

This is an estimate, not a tokenizer: about four characters per token for English text (the
rule of thumb OpenAI documents) plus a few tokens of framing per message. It moves with the
size of the text, which is what usage and cost reports need from a development model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from schemas.slm import ChatMessage, ToolSpec

CHARS_PER_TOKEN = 4
MESSAGE_FRAMING = 4


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def output_tokens(message: ChatMessage) -> int:
    """What a model would have generated: the text and any tool calls."""
    count = text_tokens(message.content or "")
    for call in message.tool_calls or []:
        count += text_tokens(call.name) + text_tokens(call.arguments)
    return count


def message_tokens(message: ChatMessage) -> int:
    return MESSAGE_FRAMING + output_tokens(message)


def prompt_tokens(messages: Iterable[ChatMessage], tools: Iterable[ToolSpec] = ()) -> int:
    count = sum(message_tokens(message) for message in messages)
    for tool in tools:
        count += text_tokens(tool.name + tool.description + json.dumps(tool.parameters))
    return count
