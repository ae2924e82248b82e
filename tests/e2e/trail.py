"""What the end-to-end chat tests read back: a turn's events in SOMA_EVT, the usage analytics
counted, the text of a streamed answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from openai.types.chat import ChatCompletionMessageParam

from bus.connection import connect
from schemas.catalogue import STREAMS
from tests.servers import NatsServer

T = TypeVar("T")


async def events_of(server: NatsServer, tenant: str, correlation_id: str) -> list[tuple[str, Msg]]:
    """The events the bus kept for one correlation id, in the order stored: (type, message)."""
    nc = await connect(server.url, "trail-events")
    found: list[tuple[str, Msg]] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"soma.evt.{tenant}.>",
            stream=STREAMS["evt"],
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        last = (await js.stream_info(STREAMS["evt"])).state.last_seq
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=2)
                if (msg.headers or {}).get("Soma-Correlation-Id") == correlation_id:
                    found.append((".".join(msg.subject.split(".")[3:]), msg))
                if msg.metadata.sequence.stream >= last:
                    break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


def turn_of(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")


def ask(prompt: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": prompt}]


async def settled(read: Callable[[], Awaitable[T]]) -> T:
    """What ``read`` reads of the usage once analytics has counted what earlier tests sent (it
    batches for a moment): the same twice a second apart."""
    last = await read()
    async with asyncio.timeout(60):
        while True:
            await asyncio.sleep(1)
            now = await read()
            if now == last:
                return now
            last = now


async def settled_usage(url: str, headers: dict[str, str], model: str) -> dict[str, int]:
    return await settled(lambda: usage(url, headers, model))


async def chat_turn_runs(url: str, headers: dict[str, str]) -> dict[str, float]:
    """The ``chat_turn`` runs analytics counted for the tenant: zero before it counted any."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.get("/v1/usage", params={"group_by": "saga_type"}, headers=headers)
    assert answer.status_code == 200, answer.text
    for row in answer.json()["data"]:
        if row["group"].get("saga_type") == "chat_turn":
            return {k: row[k] for k in ("requests", "errors", "latency_ms_avg")}
    return {"requests": 0, "errors": 0, "latency_ms_avg": 0.0}


async def usage(url: str, headers: dict[str, str], model: str) -> dict[str, int]:
    """Requests and tokens analytics counted for ``model``: zero before it counted any."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.get("/v1/usage", params={"group_by": "model"}, headers=headers)
    assert answer.status_code == 200, answer.text
    rows = [r for r in answer.json()["data"] if r["group"].get("model") == model]
    names = ("requests", "prompt_tokens", "completion_tokens")
    totals = Counter[str]()
    for row in rows:
        for name in names:
            totals[name] += row[name]
    return {name: totals[name] for name in names}


def streamed_content(text: str) -> str:
    """The answer's text in a chat completion's SSE body."""
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: {")
    ]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
