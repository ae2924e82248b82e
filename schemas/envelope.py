"""The envelope: who sent a message, why, and how to trace it — carried in NATS headers.

Keeping the envelope in headers (not the body) lets operators filter and route without decoding
payloads, and lets the JetStream server deduplicate on ``Nats-Msg-Id``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Literal

import msgspec

MSG_ID = "Nats-Msg-Id"
CORRELATION_ID = "Soma-Correlation-Id"
CAUSATION_ID = "Soma-Causation-Id"
TENANT = "Soma-Tenant"
ACTOR = "Soma-Actor"
SCHEMA = "Soma-Schema"
SCHEMA_VERSION = "Soma-Schema-Version"
TIMESTAMP = "Soma-Timestamp"
TRACEPARENT = "traceparent"


# A command's id says who sent it, so a turn's story can name each hop's sender without asking
# and the saga engine can route a reply to the saga that asked. The engine names its commands
# ``<saga>.<run>.<seq>.<n>.<attempt>``, with this mark after a group mode command's id.
GROUP_MARK = ".g"
# A chat turn the gateway runs itself (direct and pass-through turns) names each command by the
# turn's id and its step: a resent command is the same message, which the server drops.
TURN_STEPS = frozenset({"prompt", "recall", "slm", "answer", "store"})
Sender = Literal["sagas", "gateway", "caller"]


def turn_step_id(turn_id: str, step: str) -> str:
    """The id of the command the gateway sends as ``step`` of the chat turn ``turn_id``."""
    if step not in TURN_STEPS:
        raise ValueError(f"{step!r} is not a step of a chat turn: one of {sorted(TURN_STEPS)}")
    return f"{turn_id}.{step}"


def turn_end_id(turn_id: str) -> str:
    """The id of a gateway-run chat turn's end (``gateway.turn_finished``): whoever publishes
    it, the gateway that ran the turn or the saga runner ending a turn whose gateway died, the
    server keeps one."""
    return f"{turn_id}.finished"


def saga_of_command(message_id: str | None) -> str | None:
    """The saga that sent a command, read from the id the engine gave it; None for anything
    else."""
    if not message_id:
        return None
    parts = message_id.removesuffix(GROUP_MARK).rsplit(".", 4)
    if len(parts) != 5 or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0]


def sender_of(message_id: str, correlation_id: str | None) -> Sender:
    """Who sent a command, read from its id: the saga runner, the gateway running a chat turn's
    steps itself, or else the caller that started the work (through the gateway, or
    ``soma publish``)."""
    if saga_of_command(message_id) is not None:
        return "sagas"
    turn, _, step = message_id.rpartition(".")
    if step in TURN_STEPS and turn and turn == correlation_id:
        return "gateway"
    return "caller"


def new_id() -> str:
    """A fresh, sortable-enough unique id (hex UUID4) for messages, sagas and calls."""
    return uuid.uuid4().hex


class EnvelopeError(ValueError):
    """Headers that do not form a valid envelope (missing or malformed fields)."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    correlation_id: str
    tenant: str
    schema: str
    version: int = 1
    causation_id: str | None = None
    actor: str = "system"
    traceparent: str | None = None
    timestamp: float = msgspec.field(default_factory=time.time)

    def to_headers(self) -> dict[str, str]:
        headers = {
            MSG_ID: self.message_id,
            CORRELATION_ID: self.correlation_id,
            TENANT: self.tenant,
            ACTOR: self.actor,
            SCHEMA: self.schema,
            SCHEMA_VERSION: str(self.version),
            TIMESTAMP: f"{self.timestamp:.6f}",
        }
        if self.causation_id:
            headers[CAUSATION_ID] = self.causation_id
        if self.traceparent:
            headers[TRACEPARENT] = self.traceparent
        return headers

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | None) -> Envelope:
        h = headers or {}
        missing = [k for k in (MSG_ID, CORRELATION_ID, TENANT, SCHEMA) if not h.get(k)]
        if missing:
            raise EnvelopeError(f"envelope headers missing: {', '.join(missing)}")
        try:
            version = int(h.get(SCHEMA_VERSION, "1"))
            timestamp = float(h.get(TIMESTAMP, "0") or 0)
        except ValueError as exc:
            raise EnvelopeError(f"envelope header malformed: {exc}") from exc
        return cls(
            message_id=h[MSG_ID],
            correlation_id=h[CORRELATION_ID],
            causation_id=h.get(CAUSATION_ID) or None,
            tenant=h[TENANT],
            actor=h.get(ACTOR, "system"),
            schema=h[SCHEMA],
            version=version,
            traceparent=h.get(TRACEPARENT) or None,
            timestamp=timestamp,
        )

    def reply(self, schema: str, message_id: str, version: int = 1) -> Envelope:
        """The envelope of a message caused by this one: same correlation and tenant."""
        return Envelope(
            message_id=message_id,
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            tenant=self.tenant,
            actor=self.actor,
            schema=schema,
            version=version,
            traceparent=self.traceparent,
        )
