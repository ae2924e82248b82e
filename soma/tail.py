"""Tailing the streams for operators, live or from a point in time, without touching handlers.

Each tail is an *ordered* ephemeral consumer: no acks, in memory, removed by the server shortly
after the tail goes away. It never shares a durable with a handler, so watching the commands
stream cannot take work from anyone.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from rich.text import Text

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

DEFAULT_PATTERN = "soma.evt.>"
_KINDS = {"evt": STREAMS["evt"], "cmd": STREAMS["cmd"], "dlq": STREAMS["dlq"]}


class TailError(ValueError):
    """A pattern, start point or stream the tail cannot use; the message says what would work."""


def stream_for(pattern: str) -> str:
    tokens = pattern.split(".")
    valid = (
        len(tokens) >= 3
        and tokens[0] == "soma"
        and tokens[1] in _KINDS
        and all(tokens)
        and ">" not in tokens[:-1]
    )
    if not valid:
        raise TailError(
            f"cannot tail {pattern!r}: give a subject pattern inside one stream — "
            "soma.evt.> (events), soma.cmd.> (commands), soma.dlq.> (dead letters), "
            "or narrower, e.g. soma.evt.acme.> or soma.cmd.*.policy.>"
        )
    return _KINDS[tokens[1]]


def narrow_to_tenant(pattern: str, tenant: str | None) -> str:
    """Let the server filter by tenant when the pattern leaves the tenant token open."""
    if not tenant:
        return pattern
    tokens = pattern.split(".")
    if len(tokens) == 3 and tokens[2] == ">":
        return ".".join([*tokens[:2], tenant, ">"])
    if len(tokens) > 3 and tokens[2] == "*":
        return ".".join([*tokens[:2], tenant, *tokens[3:]])
    return pattern


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``10m``, ``1h30m``, ``2d`` ago, or an ISO time (naive = local time); returned in UTC."""
    value = text.strip()
    now = now or datetime.now(UTC)
    if value and _DURATION.sub("", value) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise TailError(
            f"--since {text!r}: expected a duration (30s, 10m, 2h, 1d12h) or a time "
            "(2026-11-25T10:00:00 in local time, or with Z / +01:00)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.astimezone(UTC)


@dataclass(frozen=True)
class Start:
    policy: DeliverPolicy
    time: datetime | None = None
    seq: int | None = None

    def describe(self) -> str:
        if self.policy == DeliverPolicy.ALL:
            return "from the first message kept"
        if self.time is not None:
            return f"from {self.time.astimezone().isoformat(timespec='seconds')}"
        if self.seq is not None:
            return f"from sequence {self.seq}"
        return "new messages only"


def start_point(since: str | None, from_seq: int | None, everything: bool) -> Start:
    chosen = [
        name
        for name, on in (
            ("--since", since),
            ("--from-seq", from_seq is not None),
            ("--all", everything),
        )
        if on
    ]
    if len(chosen) > 1:
        raise TailError(f"choose one start point, not {' and '.join(chosen)}")
    if since:
        return Start(DeliverPolicy.BY_START_TIME, time=parse_since(since))
    if from_seq is not None:
        if from_seq < 1:
            raise TailError("--from-seq counts from 1")
        return Start(DeliverPolicy.BY_START_SEQUENCE, seq=from_seq)
    if everything:
        return Start(DeliverPolicy.ALL)
    return Start(DeliverPolicy.NEW)


@dataclass(frozen=True)
class Record:
    stream: str
    seq: int
    subject: str
    time: datetime
    headers: dict[str, str]
    data: bytes

    @classmethod
    def from_msg(cls, msg: Msg) -> Record:
        meta = msg.metadata
        return cls(
            stream=meta.stream,
            seq=meta.sequence.stream,
            subject=msg.subject,
            time=meta.timestamp,
            headers=dict(msg.headers or {}),
            data=msg.data,
        )

    @property
    def dead_letter(self) -> bool:
        return self.stream == STREAMS["dlq"]

    @property
    def schema(self) -> str:
        if self.headers.get(SCHEMA):
            return self.headers[SCHEMA]
        try:
            return by_subject(self.subject).name
        except UnknownMessage:
            return self.subject

    @property
    def tenant(self) -> str:
        parts = self.subject.split(".")
        return self.headers.get(TENANT) or (parts[2] if len(parts) > 2 else "")

    @property
    def correlation_id(self) -> str:
        return self.headers.get(CORRELATION_ID, "")

    @property
    def message_id(self) -> str:
        return self.headers.get(MSG_ID, "")

    def payload(self) -> Any:
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            return {"raw": self.data.decode(errors="replace")}

    def envelope(self) -> dict[str, Any]:
        h = self.headers
        timestamp = h.get(TIMESTAMP)
        return {
            "message_id": h.get(MSG_ID),
            "correlation_id": h.get(CORRELATION_ID),
            "causation_id": h.get(CAUSATION_ID),
            "tenant": h.get(TENANT),
            "actor": h.get(ACTOR),
            "schema": h.get(SCHEMA),
            "version": int(h[SCHEMA_VERSION]) if h.get(SCHEMA_VERSION, "").isdigit() else None,
            "timestamp": float(timestamp) if timestamp else None,
            "traceparent": h.get(TRACEPARENT),
        }

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stream": self.stream,
            "seq": self.seq,
            "subject": self.subject,
            "time": self.time.astimezone(UTC).isoformat(),
            "schema": self.schema,
            "envelope": self.envelope(),
            "headers": self.headers,
            "payload": self.payload(),
        }
        if self.dead_letter:
            out["dead_letter"] = {
                "reason": self.headers.get(deadletter.REASON),
                "subject": self.headers.get(deadletter.SUBJECT),
                "service": self.headers.get(deadletter.CONSUMER),
                "deliveries": int(self.headers.get(deadletter.DELIVERIES, "0") or 0),
            }
        return out


@dataclass(frozen=True)
class Filters:
    tenant: str | None = None
    correlation: str | None = None  # a full id or the prefix shown in readable output
    type: str | None = None  # a schema name or glob: policy.*, *.failed

    def match(self, record: Record) -> bool:
        if self.tenant and record.tenant != self.tenant:
            return False
        if self.correlation and not record.correlation_id.startswith(self.correlation):
            return False
        return not self.type or fnmatch.fnmatchcase(record.schema, self.type)


async def subscribe(js: JetStreamContext, pattern: str, start: Start) -> Any:
    """An ordered ephemeral consumer on the stream that holds ``pattern``."""
    stream = stream_for(pattern)
    config = ConsumerConfig(
        deliver_policy=start.policy,
        opt_start_time=start.time,
        opt_start_seq=start.seq,
        inactive_threshold=5.0,
    )
    try:
        return await js.subscribe(pattern, stream=stream, ordered_consumer=True, config=config)
    except NotFoundError:
        raise TailError(
            f"stream {stream} does not exist on this server yet; start the system "
            "(`soma up`, or any `soma run <process>`) so the streams are created"
        ) from None


async def records(sub: Any, idle: float | None) -> AsyncIterator[Record]:
    """Messages as they arrive; ends after ``idle`` seconds without one (never when None)."""
    while True:
        try:
            msg = await sub.next_msg(timeout=idle)
        except NatsTimeout:
            return
        yield Record.from_msg(msg)


_encoder_kwargs: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}


def json_line(record: Record) -> str:
    return json.dumps(record.as_json(), **_encoder_kwargs)


def _short(value: str, n: int = 8) -> str:
    return value[:n] if value else "-"


def readable(record: Record, width: int) -> Text:
    """One line: time, kind, type, tenant, correlation and message id (short), body preview."""
    local = record.time.astimezone()
    today = datetime.now().astimezone().date()
    stamp = local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    if local.date() != today:
        stamp = local.strftime("%Y-%m-%d ") + stamp
    kind = record.subject.split(".")[1] if record.subject.count(".") >= 1 else "?"
    style = {"cmd": "cyan", "evt": "green", "dlq": "bold red"}.get(kind, "")
    schema_style = "red" if record.schema.endswith(".failed") else "bold"
    line = Text()
    line.append(stamp, "dim")
    line.append(f" {kind} ", style)
    line.append(f"{record.schema:<20}", schema_style)
    line.append(f" {record.tenant:<12}")
    line.append(f" c:{_short(record.correlation_id)}", "magenta")
    line.append(f" m:{_short(record.message_id)} ", "dim")
    payload = record.payload()
    preview = json.dumps(payload, **_encoder_kwargs) if payload is not None else ""
    if record.dead_letter:
        reason = record.headers.get(deadletter.REASON, "?")
        preview = f"reason: {reason} | {preview}"
    room = max(width - len(line), 20)
    if len(preview) > room:
        preview = preview[: room - 1] + "…"
    line.append(preview)
    return line
