"""Publishing typed messages: envelope in headers, ``Nats-Msg-Id`` for server-side dedup."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from nats.aio.client import Client

from bus import tracing
from bus.errors import PayloadTooLarge
from bus.service import Connected
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


def wire_size(data: bytes, headers: dict[str, str] | None) -> int:
    """What the server counts against ``max_payload``: the body and the encoded headers."""
    if not headers:
        return len(data)
    lines = sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    return len(data) + len(b"NATS/1.0\r\n") + lines + 2


def check_size(nc: Client, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
    """Refuse before sending what the server would refuse by closing the connection.

    nats-py checks only the body, while the server counts the headers too and answers a message
    over its limit by dropping the connection, so every other request in flight on it fails as
    "bus not reachable". ``PayloadTooLarge`` says what happened instead.
    """
    size = wire_size(data, headers)
    limit = nc.max_payload
    if limit > 0 and size > limit:
        raise PayloadTooLarge(subject, size, limit)


async def publish(
    bus: Connected,
    message: msgspec.Struct,
    env: Envelope,
    *,
    entry: MessageType | None = None,
    timeout: float = 5.0,
) -> Published:
    """Publish on ``bus`` and wait for the JetStream ack; a re-publish of the same id reports
    ``duplicate``.

    ``PayloadTooLarge`` when the message does not fit the server's ``max_payload``.
    """
    entry = entry or of_type(type(message))
    subject = entry.subject(env.tenant, env.correlation_id)
    tracing.bind(env.correlation_id, env.tenant)
    if tracing.enabled() and env.traceparent:
        with tracing.producing(env.traceparent, entry.name, subject) as traceparent:
            env = msgspec.structs.replace(env, traceparent=traceparent)
            return await _publish(bus, message, env, subject, timeout)
    return await _publish(bus, message, env, subject, timeout)


async def _publish(
    bus: Connected, message: msgspec.Struct, env: Envelope, subject: str, timeout: float
) -> Published:
    data, headers = encode(message), env.to_headers()
    check_size(bus.nc, subject, data, headers)
    ack = await bus.js.publish(subject, data, timeout=timeout, headers=headers)
    return Published(subject, ack.stream, ack.seq, bool(ack.duplicate), env.message_id)


async def publish_ephemeral(nc: Client, subject: str, message: msgspec.Struct) -> None:
    """Core-NATS publish for data nobody needs to replay (token deltas)."""
    data = encode(message)
    check_size(nc, subject, data, None)
    await nc.publish(subject, data)
