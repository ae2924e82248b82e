"""What the fake provider servers answer, scripted per test, and what they were asked.

A test queues replies (text, tool calls, token counts) or failures (status, headers); the fake
server renders each in its API's wire format, as JSON or as an SSE stream depending on the
request's ``stream`` flag, and records every request body it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette


@dataclass
class Reply:
    text: str = ""
    tool_calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    prompt_tokens: int = 11
    completion_tokens: int = 7
    delay: float = 0.0
    # Stream this many content pieces, then an error event instead of the rest.
    error_after: int | None = None


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
