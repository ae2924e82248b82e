"""OpenAI chat completions through the official SDK, for OpenAI and any compatible server
(vLLM, Ollama, llama.cpp) reached by base URL.

The SDK's own retries are off (``max_retries=0``): routing owns the retry policy, so a 429 is
waited out once, by our rules, and not again inside the client.

One client per deployment, made on its first call and kept warm until the process stops; it
speaks HTTP through the SDK's aiohttp transport, which costs less CPU per call than the default.
The call goes through the client's own ``post`` (the SDK's way of making any request) with the
body as built here: ``chat.completions.create`` would first walk every message of it against the
parameter types, which for these plain dicts of strings changes nothing and costs about as much
as the HTTP exchange itself. A whole answer comes back as the raw response and is decoded here
with msgspec into the few fields a completion reads: building the SDK's ``ChatCompletion`` models
cost about a third of the call's CPU (0.5 ms of 1.5). Authentication, status errors, streamed
chunks and the SDK's exceptions stay the SDK's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import httpx
import msgspec
import openai
from openai import AsyncOpenAI, AsyncStream, DefaultAioHttpClient
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import ChoiceLogprobs

from handlers.slm import tokens
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

# Self-hosted servers often take no key, but the SDK refuses to start without one.
NO_KEY = "no-key"

CHAT_COMPLETIONS = "/chat/completions"


class OpenAIProvider:
    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str, float], AsyncOpenAI] = {}

    async def complete(
        self, request: SlmComplete, deployment: Deployment, sink: DeltaSink | None
    ) -> Completion:
        client = self._client(deployment)
        params = request_params(request, deployment)
        try:
            if sink is None:
                raw = await client.post(CHAT_COMPLETIONS, body=params, cast_to=httpx.Response)
                return completion_from_body(raw.content, deployment.label)
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
            stream = await client.post(
                CHAT_COMPLETIONS,
                body=params,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=AsyncStream[ChatCompletionChunk],
            )
            async with stream:
                return await read_stream(stream, request, sink, deployment.label)
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"{deployment.label} answered {exc.status_code}: {exc.message}",
                retryable=is_retryable_status(exc.status_code),
                status=exc.status_code,
                retry_after=retry_after(exc.response.headers),
            ) from exc
        except openai.APIError as exc:
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

    def _client(self, deployment: Deployment) -> AsyncOpenAI:
        key = (deployment.base_url, deployment.api_key or NO_KEY, deployment.timeout)
        client = self._clients.get(key)
        if client is None:
            client = AsyncOpenAI(
                api_key=deployment.api_key or NO_KEY,
                base_url=deployment.base_url,
                timeout=deployment.timeout,
                max_retries=0,
                http_client=DefaultAioHttpClient(timeout=deployment.timeout),
            )
            self._clients[key] = client
        return client


def request_params(request: SlmComplete, deployment: Deployment) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model": deployment.model,
        "messages": [_message_param(message) for message in request.messages],
    }
    if request.tools:
        params["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
        if request.tool_choice is not None:
            params["tool_choice"] = request.tool_choice
        if request.parallel_tool_calls is not None:
            params["parallel_tool_calls"] = request.parallel_tool_calls
    max_tokens = request.max_tokens or deployment.max_output_tokens
    if max_tokens is not None:
        # OpenAI itself wants max_completion_tokens (its reasoning models refuse max_tokens);
        # compatible servers are reliably known to read max_tokens.
        name = "max_tokens" if deployment.base_url else "max_completion_tokens"
        params[name] = max_tokens
    optional = {
        "temperature": request.temperature,
        "stop": request.stop,
        "seed": request.seed,
        "response_format": request.response_format,
        "user": request.user,
        "logprobs": request.logprobs,
        "top_logprobs": request.top_logprobs,
    }
    params.update({name: value for name, value in optional.items() if value is not None})
    return params


def _message_param(message: ChatMessage) -> dict[str, Any]:
    param: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        parts: list[dict[str, Any]] = []
        if message.content:
            parts.append({"type": "text", "text": message.content})
        for image in message.images:
            url: dict[str, Any] = {"url": image.url}
            if image.detail:
                url["detail"] = image.detail
            parts.append({"type": "image_url", "image_url": url})
        param["content"] = parts
    if message.name:
        param["name"] = message.name
    if message.tool_call_id:
        param["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        param["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if param["content"] is None and message.role != "assistant":
        param["content"] = ""
    return param


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    id: str = ""
    type: str = "function"
    function: _Function = msgspec.field(default_factory=_Function)


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    message: _Message = msgspec.field(default_factory=_Message)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Body(msgspec.Struct):
    """What a completion reads of a chat completion; every other field is skipped unread."""

    choices: list[_Choice] | None = None
    usage: _Usage | None = None


_BODY = msgspec.json.Decoder(_Body)


def completion_from_body(body: bytes, label: str) -> Completion:
    try:
        response = _BODY.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ProviderError(
            f"{label} answered a malformed completion: {exc}", retryable=True
        ) from exc
    if not response.choices:
        raise ProviderError("response has no choices", retryable=True)
    choice = response.choices[0]
    calls = [
        ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "{}")
        for call in choice.message.tool_calls or []
        if call.type == "function"
    ]
    message = ChatMessage(
        role="assistant", content=choice.message.content, tool_calls=calls or None
    )
    used = response.usage or _Usage()
    usage = Usage(
        prompt_tokens=used.prompt_tokens or 0, completion_tokens=used.completion_tokens or 0
    )
    logprobs = None
    if choice.logprobs:
        # In the shape the SDK's own model gives it (its absent fields as None).
        logprobs = ChoiceLogprobs.model_validate(choice.logprobs).model_dump()
    return Completion(message, choice.finish_reason or "stop", usage, logprobs=logprobs)


@dataclass
class _PartialCall:
    """A tool call whose id, name and argument fragments arrive over several chunks."""

    id: str = ""
    name: str = ""
    arguments: str = ""
    sent: bool = False

    def complete(self) -> ToolCall:
        return ToolCall(id=self.id, name=self.name, arguments=self.arguments or "{}")


async def read_stream(stream: Any, request: SlmComplete, sink: DeltaSink, label: str) -> Completion:
    """The streamed answer, whole: a stream is complete only once a chunk gave the choice its
    ``finish_reason``. The SDK stops at ``data: [DONE]`` without saying whether it saw it, and a
    body that ends cleanly midway (a server ending its body by closing the connection, a proxy
    closing between events) ends the iteration just the same; ``label`` names the deployment in
    the error. A usage chunk may follow the finishing one."""
    text: list[str] = []
    calls: dict[int, _PartialCall] = {}
    finish_reason: str | None = None
    usage: Usage | None = None
    scored: list[dict[str, Any]] | None = None
    async for chunk in stream:
        chunk = cast(ChatCompletionChunk, chunk)
        if chunk.usage is not None:
            usage = Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
            )
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.delta.content:
                text.append(choice.delta.content)
                await sink.content(choice.delta.content)
            if choice.logprobs is not None and choice.logprobs.content:
                scored = (scored or []) + [t.model_dump() for t in choice.logprobs.content]
            for fragment in choice.delta.tool_calls or []:
                if fragment.index not in calls:
                    # Calls arrive one after another: a new index means the earlier ones are whole.
                    await _send_complete(calls, sink)
                    calls[fragment.index] = _PartialCall()
                partial = calls[fragment.index]
                partial.id = partial.id or fragment.id or ""
                if fragment.function is not None:
                    partial.name = partial.name or fragment.function.name or ""
                    partial.arguments += fragment.function.arguments or ""
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    if finish_reason is None:
        # Tool calls not yet sent may lack the rest of their arguments: none goes out.
        raise stream_ended_early(label, "finish_reason")
    await _send_complete(calls, sink)
    content = "".join(text)
    tool_calls = [calls[index].complete() for index in sorted(calls)]
    message = ChatMessage(role="assistant", content=content or None, tool_calls=tool_calls or None)
    if usage is None:
        # Some compatible servers ignore stream_options.include_usage; estimate instead of 0.
        usage = Usage(
            prompt_tokens=tokens.prompt_tokens(request.messages, request.tools),
            completion_tokens=tokens.output_tokens(message),
        )
    logprobs = {"content": scored} if scored is not None else None
    return Completion(message, finish_reason, usage, logprobs=logprobs)


async def _send_complete(calls: dict[int, _PartialCall], sink: DeltaSink) -> None:
    for index in sorted(calls):
        partial = calls[index]
        if not partial.sent:
            partial.sent = True
            await sink.tool_call(partial.complete())
