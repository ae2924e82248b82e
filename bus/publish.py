"""Publishing typed messages: envelope in headers, ``Nats-Msg-Id`` for server-side dedup."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from bus.tracing import current_traceparent
from schemas.catalogue import MessageType, of_type
from schemas.envelope import Envelope, new_id

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Published:
    subject: str
    stream: str
    seq: int
    duplicate: bool
    message_id: str


def envelope_for(
    message: msgspec.Struct,
    *,
    tenant: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    actor: str = "system",
    message_id: str | None = None,
) -> Envelope:
    entry = of_type(type(message))
    mid = message_id or new_id()
    return Envelope(
        message_id=mid,
        correlation_id=correlation_id or mid,
        causation_id=causation_id,
        tenant=tenant,
        actor=actor,
        schema=entry.name,
        version=entry.version,
        traceparent=current_traceparent(),
    )


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


async def publish(
    js: JetStreamContext,
    message: msgspec.Struct,
    env: Envelope,
    *,
    entry: MessageType | None = None,
    timeout: float = 5.0,
) -> Published:
    """Publish and wait for the JetStream ack; a re-publish of the same id reports ``duplicate``."""
    entry = entry or of_type(type(message))
    subject = entry.subject(env.tenant, env.correlation_id)
    ack = await js.publish(subject, encode(message), timeout=timeout, headers=env.to_headers())
    return Published(subject, ack.stream, ack.seq, bool(ack.duplicate), env.message_id)


async def publish_ephemeral(nc: Client, subject: str, message: msgspec.Struct) -> None:
    """Core-NATS publish for data nobody needs to replay (token deltas)."""
    await nc.publish(subject, encode(message))
