"""The local development model: no key, no network, and it says so in every reply.

It is not a language model. It assembles its reply from the request (the prompt, the context
given as system messages such as recalled memories, and tool results) so every path of the
platform, streaming and the tool loop included, can run offline. It calls a tool when
``tool_choice`` requires one, when the user names an offered tool (or the telling words of its
name: "weather" for ``get_weather``) or asks to use a tool, with arguments built from the tool's
JSON schema; once a tool result is the last message it answers with that result. It honours
``stop`` and ``max_tokens`` as a model does, so clients can see and test both offline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

from handlers.slm import tokens
from handlers.slm.deltas import DeltaSink
from handlers.slm.models import Deployment
from handlers.slm.providers import Completion, ProviderError
from handlers.slm.providers.schema_values import value_for
from schemas.base import Usage
from schemas.slm import ChatMessage, SlmComplete, ToolCall, ToolSpec

MODEL_NAME = "soma-local-dev"
MARKER = "[soma local dev model]"
NOTICE = (
    f"{MARKER} Offline development model: this reply is assembled from the request,"
    " not written by a language model."
)
WORDS_PER_DELTA = 3
CONTEXT_CHARS = 300


class LocalProvider:
    async def complete(
        self, request: SlmComplete, deployment: Deployment, sink: DeltaSink | None
    ) -> Completion:
        tool = tool_to_call(request)
        stop_sequence = None
        if tool is not None:
            prompt = last_user_text(request.messages)
            arguments = value_for(tool.parameters, prompt, f"{tool.name} {tool.description}")
            call = ToolCall(
                id=call_id(request, tool),
                name=tool.name,
                arguments=json.dumps(arguments if isinstance(arguments, dict) else {}),
            )
            message = ChatMessage(role="assistant", tool_calls=[call])
            finish_reason = "tool_calls"
            if sink is not None:
                await sink.tool_call(call)
        else:
            content, finish_reason, stop_sequence = reply_for(request)
            message = ChatMessage(role="assistant", content=content)
            if sink is not None:
                for piece in pieces(content):
                    await sink.content(piece)
                    await asyncio.sleep(0)
        usage = Usage(
            prompt_tokens=tokens.prompt_tokens(request.messages, request.tools),
            completion_tokens=tokens.output_tokens(message),
        )
        return Completion(message, finish_reason, usage, stop_sequence)

    async def aclose(self) -> None:
        return None


def tool_to_call(request: SlmComplete) -> ToolSpec | None:
    if not request.tools or request.tool_choice == "none":
        return None
    if request.messages and request.messages[-1].role == "tool":
        return None
    choice = request.tool_choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        named = next((tool for tool in request.tools if tool.name == name), None)
        if named is None:
            raise ProviderError(
                f"tool_choice names {name!r}, which is not among the offered tools",
                retryable=False,
            )
        return named
    prompt = last_user_text(request.messages).lower()
    mentioned = next((tool for tool in request.tools if _names(prompt, tool.name)), None)
    if mentioned is None:
        mentioned = next((tool for tool in request.tools if _words_of(prompt, tool.name)), None)
    if mentioned is None and _asks_for_a_tool(prompt):
        mentioned = request.tools[0]
    if choice == "required":
        return mentioned or request.tools[0]
    return mentioned


def _names(prompt: str, tool_name: str) -> bool:
    spellings = {tool_name.lower(), re.sub(r"[_\-.]+", " ", tool_name.lower())}
    return any(re.search(rf"(?<!\w){re.escape(s)}(?!\w)", prompt) for s in spellings if s)


# Words of a tool's name that say what it does no more than "tool" does.
_GENERIC = frozenset({"get", "set", "fetch", "find", "run", "call", "do", "make", "tool", "api"})


def _words_of(prompt: str, tool_name: str) -> bool:
    """The prompt uses every telling word of the tool's name: "weather" for ``get_weather``."""
    parts = re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", tool_name)
    words = [w.lower() for w in parts if len(w) > 2 and w.lower() not in _GENERIC]
    return bool(words) and all(re.search(rf"(?<!\w){re.escape(w)}", prompt) for w in words)


def _asks_for_a_tool(prompt: str) -> bool:
    """The prompt asks for a tool without naming one: "use a tool", "with the tools"."""
    return re.search(r"\b(use|call|with|using)\b[\w\s]{0,12}\btools?\b", prompt) is not None


def last_user_text(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content or ""
    return ""


def call_id(request: SlmComplete, tool: ToolSpec) -> str:
    """Derived from the request, so a redelivered command calls the tool with the same id."""
    digest = hashlib.sha256()
    digest.update(tool.name.encode())
    for message in request.messages:
        digest.update(json.dumps([message.role, message.content, message.tool_call_id]).encode())
    return f"call_{digest.hexdigest()[:24]}"


def reply_for(request: SlmComplete) -> tuple[str, str, str | None]:
    """The reply text, its finish reason and the stop sequence that ended it, if one did.

    As a real model: the text ends just before the first stop sequence (the sequence itself is
    not part of it), and a reply longer than ``max_tokens`` is cut to that many tokens and ends
    with ``length``: its label goes first, so a reply of a few tokens still says what wrote it.
    """
    prompt = last_user_text(request.messages)
    text = _formatted(_compose(request.messages), request.response_format, prompt)
    text, stop_sequence = _cut_at_stop(text, request.stop or [])
    finish_reason = "stop"
    if request.max_tokens is not None and tokens.text_tokens(text) > request.max_tokens:
        text = text[: request.max_tokens * tokens.CHARS_PER_TOKEN]
        finish_reason, stop_sequence = "length", None
    return text, finish_reason, stop_sequence


def _compose(messages: list[ChatMessage]) -> str:
    lines = [NOTICE]
    for name, result in _tool_results(messages):
        lines.append(f"The {name} tool returned: {result}")
    prompt = last_user_text(messages).strip()
    if prompt:
        lines.append(f"You asked: {prompt}")
    context = [m.content.strip() for m in messages if m.role == "system" and m.content]
    if context:
        lines.append("Context I was given:")
        lines.extend(f"- {_shorten(item)}" for item in context if item)
    return "\n".join(lines)


def _tool_results(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """Tool results after the last user message, with the tool names their calls used."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    names = {call.id: call.name for message in messages for call in message.tool_calls or []}
    return [
        (names.get(m.tool_call_id or "", m.name or "requested"), m.content or "")
        for m in messages[last_user + 1 :]
        if m.role == "tool"
    ]


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= CONTEXT_CHARS else flat[: CONTEXT_CHARS - 1] + "…"


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    """The text up to the earliest stop sequence in it, and that sequence."""
    cuts = [(text.find(s), s) for s in stop if s and s in text]
    if not cuts:
        return text, None
    at, sequence = min(cuts)
    return text[:at], sequence


def _formatted(text: str, response_format: dict[str, Any] | None, prompt: str) -> str:
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        return json.dumps({"model": MODEL_NAME, "reply": text})
    if kind == "json_schema":
        schema = ((response_format or {}).get("json_schema") or {}).get("schema") or {}
        return json.dumps(value_for(schema, prompt))
    return text


def pieces(text: str) -> list[str]:
    words = re.findall(r"\S+\s*|\s+", text)
    return [
        "".join(words[start : start + WORDS_PER_DELTA])
        for start in range(0, len(words), WORDS_PER_DELTA)
    ]
