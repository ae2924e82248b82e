"""Dead letters: what could not be handled, kept with why, where it was going, and all of it.

A dead letter lives on ``soma.dlq.<tenant>.<service>`` in the dead-letter stream with the
original headers and body, plus ``Soma-Dlq-*`` headers naming the reason, the original subject,
the consumer and the delivery count. Replay republishes the original to its subject.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from schemas.catalogue import DEAD_LETTER_PREFIX, STREAMS
from schemas.envelope import MSG_ID, TENANT

REASON = "Soma-Dlq-Reason"
SUBJECT = "Soma-Dlq-Subject"
CONSUMER = "Soma-Dlq-Consumer"
DELIVERIES = "Soma-Dlq-Deliveries"
ORIGINAL_SEQ = "Soma-Dlq-Stream-Seq"
_DLQ_HEADERS = (REASON, SUBJECT, CONSUMER, DELIVERIES, ORIGINAL_SEQ)


def _token(value: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in value)
    return cleaned or "_"


async def dead_letter(
    js: JetStreamContext, msg: Msg, *, reason: str, service: str, deliveries: int
) -> None:
    """Copy ``msg`` into the dead-letter stream; idempotent by (stream seq, service)."""
    headers = dict(msg.headers or {})
    seq = msg.metadata.sequence.stream if msg.reply else 0
    tenant = _token(headers.get(TENANT, "_unknown"))
    original_id = headers.get(MSG_ID, "")
    headers.update(
        {
            REASON: reason[:2000],
            SUBJECT: msg.subject,
            CONSUMER: service,
            DELIVERIES: str(deliveries),
            ORIGINAL_SEQ: str(seq),
            MSG_ID: f"dlq-{service}-{seq or original_id}",
        }
    )
    if original_id:
        headers["Soma-Dlq-Original-Id"] = original_id
    await js.publish(f"{DEAD_LETTER_PREFIX}.{tenant}.{_token(service)}", msg.data, headers=headers)


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    subject: str
    reason: str
    service: str
    deliveries: int
    headers: dict[str, str]
    body: bytes
    time: str


def _from_raw(seq: int, headers: dict[str, str], body: bytes, time: str) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        subject=headers.get(SUBJECT, "?"),
        reason=headers.get(REASON, "?"),
        service=headers.get(CONSUMER, "?"),
        deliveries=int(headers.get(DELIVERIES, "0") or 0),
        headers=headers,
        body=body,
        time=time,
    )


async def info(js: JetStreamContext) -> StreamInfo:
    return await js.stream_info(STREAMS["dlq"])


async def get(js: JetStreamContext, seq: int) -> DeadLetter:
    raw = await js.get_msg(STREAMS["dlq"], seq)
    headers = dict(raw.headers or {})
    return _from_raw(raw.seq or seq, headers, raw.data or b"", str(raw.time or ""))


async def list_all(js: JetStreamContext, limit: int = 100) -> list[DeadLetter]:
    """Dead letters still in the stream, oldest first (up to ``limit``)."""
    state = (await info(js)).state
    out: list[DeadLetter] = []
    seq = state.first_seq
    while seq and seq <= state.last_seq and len(out) < limit:
        try:
            out.append(await get(js, seq))
        except NotFoundError:
            pass
        seq += 1
    return out


async def replay(js: JetStreamContext, seq: int, *, delete: bool = True) -> str:
    """Republish a dead letter to its original subject; returns that subject.

    The message gets a new ``Nats-Msg-Id`` (original id + replay marker) so the server's dedup
    window does not drop it as a repeat of the first delivery.
    """
    letter = await get(js, seq)
    headers = {k: v for k, v in letter.headers.items() if k not in _DLQ_HEADERS}
    original = headers.pop("Soma-Dlq-Original-Id", "") or f"dlq{seq}"
    headers[MSG_ID] = f"{original}-replay{seq}"
    await js.publish(letter.subject, letter.body, headers=headers)
    if delete:
        await js.delete_msg(STREAMS["dlq"], seq)
    return letter.subject


async def purge(js: JetStreamContext) -> int:
    before = (await info(js)).state.messages
    await js.purge_stream(STREAMS["dlq"])
    return before
