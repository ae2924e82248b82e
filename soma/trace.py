"""One turn's story from the streams: every command and event of a correlation id, in order.

The commands and events streams already hold the whole trail of a turn, each message stamped
by the server when it was stored and carrying the turn's correlation id in its headers. A trace
reads both streams from a start point through an ephemeral pull consumer (no acks, removed by
the server when the trace is done), keeps the messages of the one correlation id and orders
them by their stream time, so the gap before each message is the time the hop that produced it
took: the bus, the process that handled the message before it, and any queue in between.

Who published a message is read from the message itself: an event's subject names the service
that emitted it (``soma.evt.<tenant>.<service>.<event>``); a command whose id has the shape the
saga engine gives its commands (``<saga>.<run>.<seq>.<n>.<attempt>``) was sent by the saga
runner; one named by its turn and a step (``<turn>.prompt``, ``.recall``, ``.slm``, ``.answer``,
``.store``) by the gateway running a chat turn itself; any other command came from the caller
that started the work (through the gateway, or ``soma publish``): ``schemas.envelope.sender_of``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from rich.table import Table

from schemas.catalogue import STREAMS
from schemas.envelope import sender_of
from soma.tail import Record, Start, TailError

FETCH = 512


class TraceError(LookupError):
    """Nothing to trace: the message says where the trace looked."""


@dataclass(frozen=True)
class Step:
    """One message of the story, placed in time against the first and the one before it."""

    record: Record
    since_first_ms: float
    gap_ms: float

    @property
    def kind(self) -> str:
        parts = self.record.subject.split(".")
        return parts[1] if len(parts) > 1 else "?"

    @property
    def service(self) -> str:
        """The service the subject names: an event's publisher, a command's consumer."""
        parts = self.record.subject.split(".")
        return parts[3] if len(parts) > 3 else "?"

    @property
    def publisher(self) -> str:
        if self.kind == "evt":
            return self.service
        return sender_of(self.record.message_id, self.record.correlation_id)

    @property
    def hop(self) -> str:
        """``publisher → consumer`` for a command, the publisher alone for an event."""
        if self.kind == "cmd":
            return f"{self.publisher} → {self.service}"
        return self.publisher

    def as_json(self) -> dict[str, Any]:
        envelope = self.record.envelope()
        sent = envelope.get("timestamp")
        stored = self.record.time.timestamp()
        return {
            "index": None,  # filled by ``story``'s caller when it numbers the lines
            "since_first_ms": round(self.since_first_ms, 3),
            "gap_ms": round(self.gap_ms, 3),
            "kind": self.kind,
            "schema": self.record.schema,
            "publisher": self.publisher,
            "service": self.service,
            "time": self.record.time.isoformat(),
            # From the envelope's creation to the server storing it: the publisher's own delay.
            "publish_ms": round((stored - sent) * 1000, 3) if sent else None,
            "stream": self.record.stream,
            "seq": self.record.seq,
            "subject": self.record.subject,
            "message_id": self.record.message_id,
            "causation_id": envelope.get("causation_id"),
            "payload": self.record.payload(),
        }


def story(records: Iterable[Record]) -> list[Step]:
    """The records in stream-time order (the commands stream's before the events' at a tie,
    then by sequence), each with its time since the first and its gap from the one before."""
    ordered = sorted(records, key=lambda r: (r.time, r.stream != STREAMS["cmd"], r.seq))
    steps: list[Step] = []
    for record in ordered:
        first = ordered[0].time
        previous = steps[-1].record.time if steps else record.time
        steps.append(
            Step(
                record,
                since_first_ms=_ms(record.time, first),
                gap_ms=_ms(record.time, previous),
            )
        )
    return steps


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


async def _scan(
    js: JetStreamContext, stream: str, subject: str, start: Start, correlation: str
) -> list[Record]:
    """Every message of ``correlation`` on ``stream`` from ``start`` to the stream's end now."""
    config = ConsumerConfig(
        deliver_policy=start.policy,
        opt_start_time=start.time,
        opt_start_seq=start.seq,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=5.0,
        headers_only=False,
    )
    try:
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
    except NotFoundError:
        raise TailError(
            f"stream {stream} does not exist on this server yet; start the system "
            "(`soma up`, or any `soma run <process>`) so the streams are created"
        ) from None
    found: list[Record] = []
    try:
        info = await sub.consumer_info()
        left = info.num_pending
        while left:
            try:
                msgs = await sub.fetch(min(FETCH, left), timeout=2.0)
            except NatsTimeout:
                break
            for msg in msgs:
                record = Record.from_msg(msg)
                if record.correlation_id == correlation:
                    found.append(record)
            left = msgs[-1].metadata.num_pending if msgs else 0
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # the server drops the inactive consumer anyway
            pass
    return found


async def collect(
    js: JetStreamContext, correlation: str, start: Start, tenant: str | None = None
) -> list[Step]:
    """The story of ``correlation`` from both streams; ``TraceError`` when it has none."""
    records: list[Record] = []
    for kind in ("cmd", "evt"):
        subject = f"soma.{kind}.{tenant}.>" if tenant else f"soma.{kind}.>"
        records.extend(await _scan(js, STREAMS[kind], subject, start, correlation))
    if not records:
        raise TraceError(
            f"no command or event with correlation id {correlation!r} in "
            f"{STREAMS['cmd']} or {STREAMS['evt']} {start.describe()}"
            + (f" for tenant {tenant}" if tenant else "")
            + "; check the id (a chat completion's is its id without 'chatcmpl-') or reach "
            "further back with --since or --all"
        )
    return story(records)


def json_lines(steps: list[Step]) -> list[str]:
    out = []
    for i, step in enumerate(steps, 1):
        line = step.as_json()
        line["index"] = i
        out.append(json.dumps(line, separators=(",", ":"), ensure_ascii=False))
    return out


def table(steps: list[Step], correlation: str) -> Table:
    """The readable story: one row per message, the gaps that dominate in bold."""
    total = steps[-1].since_first_ms if steps else 0.0
    grid = Table(
        title=f"correlation {correlation}: {len(steps)} messages over {total:.1f} ms",
        title_justify="left",
        box=None,
        pad_edge=False,
    )
    grid.add_column("#", justify="right", style="dim")
    grid.add_column("+ms", justify="right")
    grid.add_column("gap ms", justify="right")
    grid.add_column("kind")
    grid.add_column("type")
    grid.add_column("published by")
    grid.add_column("message id", style="dim", overflow="fold")
    biggest = sorted((s.gap_ms for s in steps), reverse=True)[:3]
    for i, step in enumerate(steps, 1):
        gap = f"{step.gap_ms:.1f}"
        if step.gap_ms > 0 and step.gap_ms in biggest:
            gap = f"[bold]{gap}[/bold]"
        style = {"cmd": "cyan", "evt": "green"}.get(step.kind, "")
        schema = step.record.schema
        grid.add_row(
            str(i),
            f"{step.since_first_ms:.1f}",
            gap,
            f"[{style}]{step.kind}[/{style}]" if style else step.kind,
            f"[red]{schema}[/red]" if schema.endswith(".failed") else schema,
            step.hop,
            step.record.message_id,
        )
    return grid
