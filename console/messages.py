"""Messages of the streams as the browser sees them: envelope, decoded body, and the filters.

A message is turned into JSON once, here, for the live view, the story and the dead letters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg

from bus import deadletter
from schemas.catalogue import STREAMS, UnknownMessage, by_subject
from schemas.envelope import (
    ACTOR,
    CAUSATION_ID,
    CORRELATION_ID,
    MSG_ID,
    SCHEMA,
    SCHEMA_VERSION,
    TENANT,
    TIMESTAMP,
    TRACEPARENT,
)

KINDS = {"evt": STREAMS["evt"], "cmd": STREAMS["cmd"], "dlq": STREAMS["dlq"]}


def _body(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"raw": data.decode(errors="replace")}


def schema_of(subject: str, headers: dict[str, str]) -> str:
    if headers.get(SCHEMA):
        return headers[SCHEMA]
    try:
        return by_subject(subject).name
    except UnknownMessage:
        return subject


def as_json(
    stream: str, seq: int, subject: str, time: datetime, headers: dict[str, str], data: bytes
) -> dict[str, Any]:
    """One message: where it is, its envelope, its headers and its decoded body."""
    tokens = subject.split(".")
    stamp = headers.get(TIMESTAMP)
    out: dict[str, Any] = {
        "stream": stream,
        "seq": seq,
        "subject": subject,
        "kind": tokens[1] if len(tokens) > 1 else "?",
        "tenant": headers.get(TENANT) or (tokens[2] if len(tokens) > 2 else ""),
        "service": tokens[3] if len(tokens) > 3 else "",
        "time": time.isoformat(),
        "ts": time.timestamp(),
        "schema": schema_of(subject, headers),
        "envelope": {
            "message_id": headers.get(MSG_ID),
            "correlation_id": headers.get(CORRELATION_ID),
            "causation_id": headers.get(CAUSATION_ID),
            "tenant": headers.get(TENANT),
            "actor": headers.get(ACTOR),
            "schema": headers.get(SCHEMA),
            "version": headers.get(SCHEMA_VERSION),
            "timestamp": float(stamp) if stamp else None,
            "traceparent": headers.get(TRACEPARENT),
        },
        "headers": headers,
        "body": _body(data),
    }
    if stream == STREAMS["dlq"]:
        out["dead_letter"] = {
            "reason": headers.get(deadletter.REASON),
            "subject": headers.get(deadletter.SUBJECT),
            "service": headers.get(deadletter.CONSUMER),
            "deliveries": headers.get(deadletter.DELIVERIES),
        }
    return out


def from_msg(msg: Msg) -> dict[str, Any]:
    meta = msg.metadata
    return as_json(
        meta.stream,
        meta.sequence.stream,
        msg.subject,
        meta.timestamp,
        dict(msg.headers or {}),
        msg.data,
    )


@dataclass(frozen=True)
class Filters:
    """What the live view keeps; empty fields keep everything. ``type`` and ``text`` match
    anywhere in the schema name and in the whole message, case-insensitively."""

    service: str = ""
    type: str = ""
    correlation: str = ""
    text: str = ""

    def match(self, message: dict[str, Any]) -> bool:
        if self.service and message["service"] != self.service:
            return False
        if self.type and self.type.lower() not in str(message["schema"]).lower():
            return False
        correlation = message["envelope"].get("correlation_id") or ""
        if self.correlation and not correlation.startswith(self.correlation):
            return False
        if self.text:
            blob = json.dumps(message, ensure_ascii=False, default=str).lower()
            if self.text.lower() not in blob:
                return False
        return True


def subject_for(kind: str, tenant: str | None) -> str:
    """The stream subjects of ``kind``, narrowed on the server to one tenant when given."""
    return f"soma.{kind}.{tenant}.>" if tenant else f"soma.{kind}.>"
