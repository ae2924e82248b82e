"""A local server speaking Anthropic's Messages API (JSON and SSE), driven by a Script."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .scripted import Cut, Failure, Reply, Script, cut_body, ended_after, fragments, pieces

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_app(script: Script) -> Starlette:
    async def messages(request: Request) -> Response | Cut:
        body = await request.json()
        # The key arrives as x-api-key or, from newer SDKs, as a bearer token.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        body["_api_key"] = request.headers.get("x-api-key") or bearer or None
        step = script.next(body)
        if isinstance(step, Failure):
            error = {"type": ERROR_TYPES.get(step.status, "api_error"), "message": step.message}
            return JSONResponse(
                {"type": "error", "error": error}, status_code=step.status, headers=step.headers
            )
        if step.delay:
            await asyncio.sleep(step.delay)
        if body.get("stream"):
            events = _events(step, body["model"])
            if step.end_after is not None:
                events = ended_after(events, step.end_after)
            if step.cut_after is not None:
                return Cut(events, "text/event-stream")
            return StreamingResponse(events, media_type="text/event-stream")
        message = _message(step, body["model"])
        if step.cut_after is not None:
            return cut_body(message, step.cut_after)
        return JSONResponse(message)

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def _stop_reason(reply: Reply) -> str:
    return "tool_use" if reply.tool_calls else "end_turn"


def _message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for id_, name, args in reply.tool_calls:
        content.append({"type": "tool_use", "id": id_, "name": name, "input": args})
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n"


async def _events(reply: Reply, model: str) -> AsyncIterator[str]:
    start = {**_message(reply, model), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": 1}
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    index = 0
    if reply.text:
        yield _event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for number, piece in enumerate(pieces(reply.text)):
            if reply.error_after is not None and number >= reply.error_after:
                error = {"type": "overloaded_error", "message": "Overloaded"}
                yield _event("error", {"error": error})
                return
            if reply.cut_after is not None and number >= reply.cut_after:
                return
            delta = {"type": "text_delta", "text": piece}
            yield _event("content_block_delta", {"index": 0, "delta": delta})
        yield _event("content_block_stop", {"index": 0})
        index = 1
    for id_, name, args in reply.tool_calls:
        block = {"type": "tool_use", "id": id_, "name": name, "input": {}}
        yield _event("content_block_start", {"index": index, "content_block": block})
        for part in fragments(json.dumps(args)):
            delta = {"type": "input_json_delta", "partial_json": part}
            yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
        index += 1
    yield _event(
        "message_delta",
        {
            "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
            "usage": {"output_tokens": reply.completion_tokens},
        },
    )
    yield _event("message_stop", {})
