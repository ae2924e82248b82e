"""A local server speaking OpenAI's chat completions API (JSON and SSE), driven by a Script."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted import Cut, Failure, Reply, Script, cut_body, ended_after, fragments, pieces

ERROR_TYPES = {429: "rate_limit_exceeded", 400: "invalid_request_error", 401: "invalid_api_key"}


def openai_app(script: Script) -> Starlette:
    async def chat_completions(request: Request) -> Response | Cut:
        body = await request.json()
        body["_authorization"] = request.headers.get("authorization")
        # The client's end of the connection: one port for two requests means one kept-alive one.
        body["_client_port"] = request.client.port if request.client else None
        step = script.next(body)
        if isinstance(step, Failure):
            error = {
                "message": step.message,
                "type": ERROR_TYPES.get(step.status, "server_error"),
                "param": None,
                "code": None,
            }
            return JSONResponse({"error": error}, status_code=step.status, headers=step.headers)
        if step.delay:
            await asyncio.sleep(step.delay)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _chunks(step, body["model"], include_usage, bool(body.get("logprobs")))
            if step.end_after is not None:
                events = ended_after(events, step.end_after)
            if step.cut_after is not None:
                return Cut(events, "text/event-stream")
            return StreamingResponse(events, media_type="text/event-stream")
        completion = _completion(step, body["model"], bool(body.get("logprobs")))
        if step.cut_after is not None:
            return cut_body(completion, step.cut_after)
        return JSONResponse(completion)

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])


def _finish_reason(reply: Reply) -> str:
    return "tool_calls" if reply.tool_calls else "stop"


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def token_logprob(piece: str) -> dict[str, Any]:
    """What the fake reports for one piece of text when asked for logprobs."""
    return {"token": piece, "logprob": -0.25, "bytes": list(piece.encode()), "top_logprobs": []}


def _completion(reply: Reply, model: str, logprobs: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": id_,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for id_, name, args in reply.tool_calls
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": [token_logprob(p) for p in pieces(reply.text)]}
                if logprobs
                else None,
                "finish_reason": _finish_reason(reply),
            }
        ],
        "usage": _usage(reply),
    }


async def _chunks(
    reply: Reply, model: str, include_usage: bool, logprobs: bool = False
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        piece = delta.get("content")
        scored = {"content": [token_logprob(piece)]} if logprobs and piece else None
        choice = {"index": 0, "delta": delta, "logprobs": scored, "finish_reason": finish}
        return _data(_chunk_envelope(model, [choice]))

    yield chunk({"role": "assistant", "content": ""})
    for number, piece in enumerate(pieces(reply.text)):
        if reply.error_after is not None and number >= reply.error_after:
            yield _data({"error": {"message": "upstream went away", "type": "server_error"}})
            return
        if reply.cut_after is not None and number >= reply.cut_after:
            return
        yield chunk({"content": piece})
    for index, (id_, name, args) in enumerate(reply.tool_calls):
        opening = {
            "index": index,
            "id": id_,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        yield chunk({"tool_calls": [opening]})
        for part in fragments(json.dumps(args)):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    yield chunk({}, _finish_reason(reply))
    if include_usage:
        yield _data({**_chunk_envelope(model, []), "usage": _usage(reply)})
    yield "data: [DONE]\n\n"


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _chunk_envelope(model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
