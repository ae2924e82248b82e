"""A request's story: every command and event of one correlation id, in order, with hop times.

Both streams are read from a start point through ordered ephemeral consumers (no acks) and only the
messages of the correlation id are kept; ordered by the time the server stored them, the gap
before each message is the time the hop that produced it took. Who published a command is told
by its id (``schemas.envelope.sender_of``): the saga runner's, the gateway's for the steps of a
chat turn it runs itself, or the caller's.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from console.messages import KINDS, from_msg, subject_for
from schemas.envelope import CORRELATION_ID, sender_of

IDLE = 1.0  # seconds without a message that end a read: the stream holds nothing newer


async def _scan(
    js: JetStreamContext, kind: str, tenant: str | None, since: datetime, correlation: str
) -> list[dict[str, Any]]:
    """Read ``kind``'s stream from ``since`` to its end now through an ordered consumer: the
    server names it, so the console's NATS user needs no right to name (or re-point) one."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since.isoformat(),  # type: ignore[arg-type]
        inactive_threshold=5.0,
    )
    sub = await js.subscribe(
        subject_for(kind, tenant), stream=KINDS[kind], ordered_consumer=True, config=config
    )
    found: list[dict[str, Any]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE)
            except NatsTimeout:
                break  # nothing (more) stored since the start point
            if (msg.headers or {}).get(CORRELATION_ID) == correlation:
                found.append(from_msg(msg))
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


def publisher(message: dict[str, Any]) -> str:
    if message["kind"] == "evt":
        return str(message["service"])
    envelope = message["envelope"]
    return sender_of(envelope.get("message_id") or "", envelope.get("correlation_id"))


def ordered(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """In stored order (a command before an event at a tie), each with ``since_first_ms``,
    ``gap_ms`` and the hop (``publisher → consumer`` for a command)."""
    steps = sorted(messages, key=lambda m: (m["ts"], m["kind"] != "cmd", m["seq"]))
    first = steps[0]["ts"] if steps else 0.0
    previous = first
    for step in steps:
        step["since_first_ms"] = round((step["ts"] - first) * 1000, 3)
        step["gap_ms"] = round((step["ts"] - previous) * 1000, 3)
        step["publisher"] = publisher(step)
        step["hop"] = (
            f"{step['publisher']} → {step['service']}"
            if step["kind"] == "cmd"
            else step["publisher"]
        )
        previous = step["ts"]
    return steps


async def collect(
    js: JetStreamContext, correlation: str, tenant: str | None, since: datetime
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for kind in ("cmd", "evt"):
        messages.extend(await _scan(js, kind, tenant, since, correlation))
    return ordered(messages)
