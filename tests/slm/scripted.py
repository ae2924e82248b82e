"""What the fake provider servers answer, scripted per test, and what they were asked.

A test queues replies (text, tool calls, token counts) or failures (status, headers); the fake
server renders each in its API's wire format, as JSON or as an SSE stream depending on the
request's ``stream`` flag, and records every request body it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    delay: float = 0.0
    # Stream this many content pieces, then an error event instead of the rest.
    error_after: int | None = None
    # Send this many content pieces (streamed) or this many bytes of the body (not streamed),
    # then drop the connection: the answer is cut off midway.
    cut_after: int | None = None
    # Stream only this many SSE events (all but the last ``-end_after`` when negative), then
    # end the body cleanly, as a server ending its body by closing the connection or a proxy
    # closing between events does: no final chunk and ``[DONE]``, no ``message_stop``.
    end_after: int | None = None


@dataclass
class Failure:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"


@dataclass
class Script:
    queue: deque[Reply | Failure] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def then(self, *items: Reply | Failure) -> Script:
        self.queue.extend(items)
        return self

    def next(self, request: dict[str, Any]) -> Reply | Failure:
        self.requests.append(request)
        if not self.queue:
            return Failure(500, message="the test scripted no more replies")
        return self.queue.popleft()

    def reset(self) -> None:
        self.queue.clear()
        self.requests.clear()


class Cut:
    """An answer whose connection drops midway: the status, the headers and the parts given
    go out, then the server closes the socket with the body unfinished (uvicorn closes the
    connection of a response its app leaves incomplete). ``length`` declares the whole body's
    Content-Length; without it the body is sent chunked, as a stream is."""

    def __init__(
        self, parts: AsyncIterable[str | bytes], media_type: str, length: int | None = None
    ) -> None:
        self.parts = parts
        self.headers = [(b"content-type", media_type.encode())]
        if length is not None:
            self.headers.append((b"content-length", str(length).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for part in self.parts:
            body = part.encode() if isinstance(part, str) else part
            await send({"type": "http.response.body", "body": body, "more_body": True})
        # Returning without the last body message: uvicorn closes the connection here.


async def ended_after(events: AsyncIterable[str], count: int) -> AsyncIterator[str]:
    """The first ``count`` events of a stream (all but the last ``-count`` when negative); the
    response then ends as any whole one does."""
    every = [event async for event in events]
    for event in every[:count]:
        yield event


def cut_body(payload: dict[str, Any], sent: int) -> Cut:
    """A JSON answer of which only the first ``sent`` bytes arrive."""
    body = json.dumps(payload).encode()

    async def part() -> AsyncIterator[bytes]:
        yield body[:sent]

    return Cut(part(), "application/json", length=len(body))


def pieces(text: str) -> list[str]:
    """Split like a tokenizer would, roughly: words with their following space."""
    return re.findall(r"\S+\s*|\s+", text)


def fragments(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` on a free local port for the duration; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
