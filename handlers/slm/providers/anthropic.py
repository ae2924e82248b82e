"""Anthropic Messages through the official SDK, mapped to and from the OpenAI-shaped schema.

The bus speaks OpenAI's chat shape; Anthropic differs in ways that matter: the system prompt is
a separate parameter, tool calls are ``tool_use`` content blocks, tool results are
``tool_result`` blocks inside a user turn, and consecutive turns of one role must be merged.
"""

from __future__ import annotations

import json
from typing import Any, cast

import anthropic
from anthropic import AsyncAnthropic, DefaultAioHttpClient
from anthropic.types import Message

from handlers.slm.deltas import DeltaSink
from handlers.slm.models import Deployment
from handlers.slm.providers import (
    TRANSPORT_ERRORS,
    Completion,
    ProviderError,
    is_retryable_status,
    stream_ended_early,
    transport_detail,
    transport_failure,
)
from handlers.slm.providers.retry_after import retry_after
from schemas.base import Usage
from schemas.slm import ChatMessage, SlmComplete, ToolCall

# Anthropic requires max_tokens on every request; this applies when neither the request nor
# the deployment sets one.
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider:
    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str, float], AsyncAnthropic] = {}

    async def complete(
        self, request: SlmComplete, deployment: Deployment, sink: DeltaSink | None
    ) -> Completion:
        client = self._client(deployment)
        params = request_params(request, deployment)
        try:
            if sink is None:
                response = await client.messages.create(**params)
                return completion_from_message(cast(Message, response))
            params["stream"] = True
            stream = await client.messages.create(**params)
            async with stream:
                return await read_stream(stream, sink, deployment.label)
        except anthropic.APIStatusError as exc:
            raise ProviderError(
                f"{deployment.label} answered {exc.status_code}: {exc.message}",
                retryable=is_retryable_status(exc.status_code),
                status=exc.status_code,
                retry_after=retry_after(exc.response.headers),
            ) from exc
        except anthropic.APIError as exc:
            # Connection failures, timeouts and error events inside a stream.
            raise ProviderError(
                f"{deployment.label}: {exc.message}{transport_detail(exc)}", retryable=True
            ) from exc
        except TRANSPORT_ERRORS as exc:
            # The transport's own error, let through by the SDK while the answer was read.
            raise transport_failure(exc, deployment) from exc

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _client(self, deployment: Deployment) -> AsyncAnthropic:
        key = (deployment.base_url, deployment.api_key or "", deployment.timeout)
        client = self._clients.get(key)
        if client is None:
            client = AsyncAnthropic(
                api_key=deployment.api_key,
                base_url=deployment.base_url,
                timeout=deployment.timeout,
                max_retries=0,
                # The SDK's aiohttp transport costs less CPU per call than its default one.
                http_client=DefaultAioHttpClient(timeout=deployment.timeout),
            )
            self._clients[key] = client
        return client


def request_params(request: SlmComplete, deployment: Deployment) -> dict[str, Any]:
    system, messages = map_messages(request.messages)
    params: dict[str, Any] = {
        "model": deployment.model,
        "messages": messages,
        "max_tokens": request.max_tokens or deployment.max_output_tokens or DEFAULT_MAX_TOKENS,
    }
    if system:
        params["system"] = system
    if request.tools:
        params["tools"] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
            }
            for tool in request.tools
        ]
        choice = map_tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False and (choice or {}).get("type") != "none":
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            params["tool_choice"] = choice
    if request.stop:
        params["stop_sequences"] = request.stop
    if request.user:
        params["metadata"] = {"user_id": request.user}
    if request.temperature is not None:
        # The SDK no longer declares temperature, while the API still accepts it.
        params["extra_body"] = {"temperature": request.temperature}
    return params


def map_messages(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """System text apart; the rest as alternating user/assistant turns of content blocks."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role in ("system", "developer"):
            if message.content:
                system.append(message.content)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(system), turns


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content or "",
            }
        ]
    blocks: list[dict[str, Any]] = [_image(image.url) for image in message.images or []]
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls or []:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call)}
        )
    return blocks


def _image(url: str) -> dict[str, Any]:
    """An https URL as a url source, a ``data:<type>;base64,<bytes>`` URL as a base64 one."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head.removeprefix("data:").split(";")[0]
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        parsed = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def map_tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    raise ProviderError(f"tool_choice {choice!r} has no Anthropic equivalent", retryable=False)


def completion_from_message(response: Message) -> Completion:
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in response.content:
        if block.type == "text":
            text.append(block.text)
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
    message = ChatMessage(role="assistant", content="".join(text) or None, tool_calls=calls or None)
    usage = _usage(response.usage.input_tokens, response.usage, response.usage.output_tokens)
    finish_reason = STOP_REASONS.get(response.stop_reason or "", "stop")
    return Completion(message, finish_reason, usage, response.stop_sequence)


def _usage(input_tokens: int | None, cache: Any, output_tokens: int) -> Usage:
    """Prompt tokens include cache reads and writes: they are input the caller paid for."""
    prompt = (
        (input_tokens or 0)
        + (getattr(cache, "cache_creation_input_tokens", None) or 0)
        + (getattr(cache, "cache_read_input_tokens", None) or 0)
    )
    return Usage(prompt_tokens=prompt, completion_tokens=output_tokens)


async def read_stream(stream: Any, sink: DeltaSink, label: str) -> Completion:
    """The streamed answer, whole: a stream is complete only once its ``message_stop`` event
    arrived, the event Anthropic's streaming protocol ends every stream with; the one or more
    ``message_delta`` events before it (the stop reason, the final usage) do not say no more
    follow. The SDK's iteration ends with the body whatever its last event, so a body that ends
    cleanly midway (a server ending its body by closing the connection, a proxy closing between
    events) would otherwise pass for a whole answer; ``label`` names the deployment in the
    error."""
    text: list[str] = []
    calls: list[ToolCall] = []
    open_calls: dict[int, dict[str, str]] = {}
    start_usage: Any = None
    output_tokens = 0
    stop_reason = "end_turn"
    stop_sequence: str | None = None
    stopped = False
    async for event in stream:
        if event.type == "message_start":
            start_usage = event.message.usage
            output_tokens = event.message.usage.output_tokens
        elif event.type == "content_block_start" and event.content_block.type == "tool_use":
            block = event.content_block
            open_calls[event.index] = {"id": block.id, "name": block.name, "json": ""}
        elif event.type == "content_block_delta":
            if event.delta.type == "text_delta":
                text.append(event.delta.text)
                await sink.content(event.delta.text)
            elif event.delta.type == "input_json_delta" and event.index in open_calls:
                open_calls[event.index]["json"] += event.delta.partial_json
        elif event.type == "content_block_stop" and event.index in open_calls:
            opened = open_calls.pop(event.index)
            call = ToolCall(id=opened["id"], name=opened["name"], arguments=opened["json"] or "{}")
            calls.append(call)
            await sink.tool_call(call)
        elif event.type == "message_delta":
            stop_reason = event.delta.stop_reason or stop_reason
            stop_sequence = event.delta.stop_sequence or stop_sequence
            output_tokens = event.usage.output_tokens
            if event.usage.input_tokens is not None:
                start_usage = event.usage
        elif event.type == "message_stop":
            stopped = True
    if not stopped:
        raise stream_ended_early(label, "message_stop event")
    message = ChatMessage(role="assistant", content="".join(text) or None, tool_calls=calls or None)
    input_tokens = getattr(start_usage, "input_tokens", None)
    usage = _usage(input_tokens, start_usage, output_tokens)
    return Completion(message, STOP_REASONS.get(stop_reason, "stop"), usage, stop_sequence)
