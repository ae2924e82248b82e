"""Anthropic's Messages API onto the chat turn, and the turn's result back.

A ``/v1/messages`` request becomes the same ``ChatTurnInput`` a chat completion does, so it runs
the same turn (policy, memory, metering, any model the slm process routes); only the shapes
differ. The translation, block by block:

- ``system`` (a string or text blocks) is a system message;
- a user turn's ``tool_result`` blocks are ``tool`` messages, in order, ahead of the turn's
  text and images (Anthropic puts results first; OpenAI wants them right after the calls);
- an assistant turn's ``tool_use`` blocks are its tool calls, their ``input`` as JSON text;
- ``tool_choice`` auto / any / tool / none is auto / required / the named function / none.

The answer's text and tool calls are ``text`` and ``tool_use`` blocks; ``finish_reason`` is a
``stop_reason`` (``stop`` → ``end_turn``, or ``stop_sequence`` when the provider named the
sequence; ``length`` → ``max_tokens``; ``tool_calls`` → ``tool_use``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.anthropic_bodies import (
    ContentBlock,
    CountTokensRequest,
    MessageParam,
    MessagesRequest,
    TextBlockParam,
    ToolChoice,
    ToolParam,
)
from gateway.auth import Principal
from gateway.errors import ApiError
from gateway.images import image_part
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.slm import ChatMessage, ImagePart, ToolCall, ToolSpec

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}

# Token estimates for count_tokens: the slm process's own rule for models without a tokenizer
# (about four characters a token, four tokens of framing a message), and a flat figure per
# image, whose size the gateway does not decode.
CHARS_PER_TOKEN = 4
MESSAGE_FRAMING = 4
IMAGE_TOKENS = 1024


def _invalid(message: str, param: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def system_text(system: str | list[TextBlockParam] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system or None
    return "\n\n".join(block.text for block in system) or None


def _image(block: ContentBlock, param: str) -> ImagePart:
    source = block.source
    if source is None:
        raise _invalid("An image block needs a 'source'.", f"{param}.source")
    if source.type == "url":
        return image_part(source.url or "", f"{param}.source.url")
    if not source.media_type or not source.data:
        raise _invalid("A base64 image source needs 'media_type' and 'data'.", f"{param}.source")
    return image_part(f"data:{source.media_type};base64,{source.data}", f"{param}.source")


def _result_text(block: ContentBlock, param: str) -> str:
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        parts = []
        for j, inner in enumerate(content):
            if inner.type != "text":
                raise _invalid(
                    f"A tool_result may hold text blocks only, not '{inner.type}'.",
                    f"{param}.content[{j}]",
                )
            parts.append(inner.text or "")
        text = "\n".join(parts)
    return f"error: {text}" if block.is_error else text


def _user_messages(message: MessageParam, index: int, calls: set[str]) -> list[ChatMessage]:
    """``calls`` are the ids of the tool_use blocks of the assistant turn before this one."""
    if isinstance(message.content, str):
        return [ChatMessage(role="user", content=message.content)]
    results: list[ChatMessage] = []
    texts: list[str] = []
    images: list[ImagePart] = []
    for j, block in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "image":
            images.append(_image(block, param))
        elif block.type == "tool_result":
            if not block.tool_use_id:
                raise _invalid("A tool_result block needs its 'tool_use_id'.", param)
            if block.tool_use_id not in calls:
                raise _invalid(
                    f"tool_use_id '{block.tool_use_id}' answers no tool_use block of the "
                    "assistant message just before it.",
                    f"{param}.tool_use_id",
                )
            results.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=block.tool_use_id,
                    content=_result_text(block, param),
                )
            )
        else:
            raise _invalid(
                f"Content blocks of type '{block.type}' are not supported in user messages; "
                "send text, image or tool_result blocks.",
                f"{param}.type",
            )
    if texts or images:
        results.append(ChatMessage(role="user", content="\n".join(texts), images=images or None))
    return results


def _assistant_message(message: MessageParam, index: int) -> ChatMessage:
    if isinstance(message.content, str):
        return ChatMessage(role="assistant", content=message.content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "tool_use":
            if not block.id or not block.name:
                raise _invalid("A tool_use block needs its 'id' and 'name'.", param)
            calls.append(
                ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input or {}))
            )
        else:
            raise _invalid(
                f"Content blocks of type '{block.type}' are not supported in assistant "
                "messages; send text or tool_use blocks.",
                f"{param}.type",
            )
    return ChatMessage(role="assistant", content="".join(texts) or None, tool_calls=calls or None)


def chat_messages(
    system: str | list[TextBlockParam] | None, messages: list[MessageParam]
) -> list[ChatMessage]:
    out = []
    text = system_text(system)
    if text:
        out.append(ChatMessage(role="system", content=text))
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if not message.content:
            raise _invalid(
                "A message needs content: a string or at least one block.", f"messages[{i}].content"
            )
        if message.role == "assistant":
            answer = _assistant_message(message, i)
            calls = {call.id for call in answer.tool_calls or []}
            out.append(answer)
        else:
            out.extend(_user_messages(message, i, calls))
            calls = set()
    return out


def tool_specs(tools: list[ToolParam] | None) -> list[ToolSpec]:
    specs = []
    for i, tool in enumerate(tools or []):
        if tool.type not in (None, "custom"):
            raise _invalid(
                f"Tools of type '{tool.type}' are not offered here; describe your own tool "
                "with 'name', 'description' and 'input_schema'.",
                f"tools[{i}].type",
            )
        specs.append(
            ToolSpec(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.input_schema or {"type": "object", "properties": {}},
            )
        )
    return specs


def tool_choice(choice: ToolChoice | None, tools: list[ToolSpec]) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice.type == "any":
        if not tools:
            raise _invalid("tool_choice 'any' needs at least one tool in 'tools'.", "tool_choice")
        return "required"
    if choice.type != "tool":
        return choice.type
    if not choice.name or choice.name not in {t.name for t in tools}:
        raise _invalid(
            f"tool_choice names '{choice.name}', which is not in 'tools'.", "tool_choice.name"
        )
    return {"type": "function", "function": {"name": choice.name}}


def turn_input(
    body: MessagesRequest, principal: Principal, *, passthrough: bool = False
) -> ChatTurnInput:
    tools = tool_specs(body.tools)
    user = body.metadata.user_id if body.metadata else None
    return ChatTurnInput(
        model=body.model,
        messages=chat_messages(body.system, body.messages),
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, tools),
        parallel_tool_calls=False
        if body.tool_choice and body.tool_choice.disable_parallel_tool_use
        else None,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
        stop=body.stop_sequences or None,
        user=user,
        session=body.session,
        stream=body.stream,
        role=principal.role or "user",
        key_id=principal.key_id,
        use_memory=body.use_memory and not passthrough,
        use_policy=not passthrough,
    )


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def input_tokens(body: CountTokensRequest) -> int:
    """The prompt's size by the slm process's estimate: what a model without a tokenizer
    reports as its input; a provider's own tokenizer may count a little differently."""
    count = 0
    for message in chat_messages(body.system, body.messages):
        count += MESSAGE_FRAMING + _tokens(message.content or "")
        for call in message.tool_calls or []:
            count += _tokens(call.name) + _tokens(call.arguments)
        count += IMAGE_TOKENS * len(message.images or [])
    for tool in tool_specs(body.tools):
        count += _tokens(tool.name + tool.description + json.dumps(tool.parameters))
    return count


def stop_reason(result: ChatTurnResult) -> str:
    if result.finish_reason == "stop":
        return "stop_sequence" if result.stop_sequence else "end_turn"
    return STOP_REASONS.get(result.finish_reason, "end_turn")


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's ``input`` is; text that is not a JSON
    object (a model's slip) is kept under ``_raw`` rather than lost."""
    try:
        parsed = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return {"_raw": call.arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": call.arguments}


def message_id(turn_id: str) -> str:
    return f"msg_{turn_id}"


def message_body(result: ChatTurnResult, turn_id: str, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.message.content:
        content.append({"type": "text", "text": result.message.content})
    for call in result.message.tool_calls or []:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call)}
        )
    return {
        "id": message_id(turn_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(result),
        "stop_sequence": result.stop_sequence if result.finish_reason == "stop" else None,
        "usage": {
            "input_tokens": result.usage.prompt_tokens,
            "output_tokens": result.usage.completion_tokens,
        },
    }
