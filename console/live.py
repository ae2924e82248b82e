"""The live view: the tail of the commands, events and dead-letter streams as server-sent events.

Each open view is one ordered ephemeral consumer per stream (no acks, in memory, dropped by the
server seconds after the view closes), so watching never takes work from a handler. A view of
one tenant is narrowed by the server (the subject carries the tenant); the other filters are
applied here, before anything is sent to the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from console.messages import KINDS, Filters, from_msg, subject_for

KEEPALIVE = 10.0  # seconds between comments on a quiet stream, so a closed page is noticed
BUFFER = 10_000  # messages held for a slow browser; beyond that the oldest are dropped


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


async def events(
    js: JetStreamContext,
    kinds: list[str],
    tenant: str | None,
    since: datetime | None,
    filters: Filters,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """``message`` events for every matching message from ``since`` (else from now on),
    after one ``ready`` event once the consumers are in place."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    dropped = 0

    async def arrived(msg: Msg) -> None:
        nonlocal dropped
        if queue.qsize() >= BUFFER:
            queue.get_nowait()
            dropped += 1
        queue.put_nowait(msg)

    subscriptions: list[Any] = []
    try:
        for kind in kinds:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.NEW,
                opt_start_time=since.isoformat() if since else None,  # type: ignore[arg-type]
                inactive_threshold=5.0,
            )
            subscriptions.append(
                await js.subscribe(
                    subject_for(kind, tenant),
                    stream=KINDS[kind],
                    ordered_consumer=True,
                    config=config,
                    cb=arrived,
                )
            )
        yield sse("ready", {"streams": [KINDS[k] for k in kinds], "tenant": tenant})
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            message = from_msg(msg)
            if filters.match(message):
                yield sse("message", message)
            if dropped:
                yield sse("dropped", {"count": dropped})
                dropped = 0
    finally:
        for sub in subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
