"""Dead letters: what could not be handled, kept with why, where it was going, and all of it.

A dead letter lives on ``soma.dlq.<tenant>.<service>`` in the dead-letter stream with the
original headers and body, plus ``Soma-Dlq-*`` headers naming the reason, the original subject,
the consumer and the delivery count. Replay republishes the original to its subject.

Who wrote a dead letter is the ``<service>`` token of its subject, not a header: the NATS
permissions let each service publish dead letters on its own subject only, so the server has
checked that token, while every header is whatever the publisher chose. Replay republishes with
the operator's rights, so a dead letter is trusted only as far as that fact carries it: a
command may come back only to the service that dead-lettered it, an event only if it is still in
the events stream exactly as dead-lettered (so someone entitled to publish it did), and headers
that claim another origin than the subject mark the letter as forged.
"""

from __future__ import annotations

import hashlib
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
    dlq_subject: str = ""

    @property
    def origin(self) -> str:
        """The service that published it, from its subject (the server enforces that token)."""
        tokens = self.dlq_subject.split(".")
        prefix = DEAD_LETTER_PREFIX.split(".")
        if len(tokens) == len(prefix) + 2 and tokens[: len(prefix)] == prefix:
            return tokens[-1]
        return "?"

    def suspicions(self) -> list[str]:
        """Why its headers or subjects cannot be trusted; empty for one the runtime wrote."""
        found: list[str] = []
        origin = self.origin
        if origin == "?":
            found.append(
                f"its subject {self.dlq_subject or '?'} is not soma.dlq.<tenant>.<service>, "
                "so no server-checked service published it"
            )
            return found
        if self.service != origin:
            found.append(
                f"its headers claim it came from {self.service!r} but it was published on "
                f"{origin}'s dead-letter subject"
            )
        kind, addressed = addressed_service(self.subject)
        if kind == "cmd" and addressed != origin:
            found.append(
                f"{origin} dead-lettered a command addressed to {addressed!r} ({self.subject}); "
                "a service only ever dead-letters its own commands"
            )
        elif kind not in ("cmd", "evt"):
            found.append(f"its original subject {self.subject!r} is neither a command nor an event")
        return found


def addressed_service(subject: str) -> tuple[str, str]:
    """``("cmd"|"evt"|"", service)`` for ``soma.<kind>.<tenant>.<service>.<name>``."""
    tokens = subject.split(".")
    if len(tokens) >= 5 and tokens[0] == "soma" and tokens[1] in ("cmd", "evt"):
        return tokens[1], tokens[3]
    return "", ""


async def verify(js: JetStreamContext, letter: DeadLetter) -> list[str]:
    """Every reason not to replay ``letter``, including the stored-original check for events.

    An event dead letter names the events-stream sequence it was delivered from; it is trusted
    only if that message is still there with the same subject and body.
    """
    found = letter.suspicions()
    if found or addressed_service(letter.subject)[0] != "evt":
        return found
    seq = int(letter.headers.get(ORIGINAL_SEQ, "0") or 0)
    try:
        original = await js.get_msg(STREAMS["evt"], seq) if seq > 0 else None
    except NotFoundError:
        original = None
    if original is None:
        found.append(
            f"the event it copies is not in {STREAMS['evt']} (sequence {seq or '?'}), so nothing "
            f"shows that anyone entitled to publish {letter.subject} did"
        )
    elif original.subject != letter.subject or (original.data or b"") != letter.body:
        found.append(
            f"{STREAMS['evt']} sequence {seq} is not the event it claims to copy "
            "(subject or body differ)"
        )
    return found


def _from_raw(
    seq: int, headers: dict[str, str], body: bytes, time: str, subject: str
) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        subject=headers.get(SUBJECT, "?"),
        reason=headers.get(REASON, "?"),
        service=headers.get(CONSUMER, "?"),
        deliveries=int(headers.get(DELIVERIES, "0") or 0),
        headers=headers,
        body=body,
        time=time,
        dlq_subject=subject,
    )


async def info(js: JetStreamContext) -> StreamInfo:
    return await js.stream_info(STREAMS["dlq"])


async def get(js: JetStreamContext, seq: int) -> DeadLetter:
    raw = await js.get_msg(STREAMS["dlq"], seq)
    headers = dict(raw.headers or {})
    return _from_raw(
        raw.seq or seq, headers, raw.data or b"", str(raw.time or ""), raw.subject or ""
    )


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


class Untrusted(Exception):
    """A dead letter whose origin does not hold up; replaying it would forge a message."""

    def __init__(self, letter: DeadLetter, reasons: list[str]) -> None:
        self.letter = letter
        self.reasons = reasons
        super().__init__(f"dead letter {letter.seq}: " + "; ".join(reasons))


async def replay(
    js: JetStreamContext,
    seq: int,
    *,
    delete: bool = True,
    force: bool = False,
    body: bytes | None = None,
) -> str:
    """Republish a dead letter to its original subject; returns that subject.

    The message gets a new ``Nats-Msg-Id`` (original id + replay marker) so the server's dedup
    window does not drop it as a repeat of the first delivery. ``body`` replaces the original
    body (the caller has checked it against the message's schema); its id also carries a hash
    of the body, so an edited replay is not dropped as a repeat of a plain one (``--keep``)
    while the same edit sent twice still is. Correlation, causation, tenant and the other
    envelope headers stay as they were. ``Untrusted`` (nothing published) when ``verify``
    finds a reason not to, unless ``force``.
    """
    letter = await get(js, seq)
    reasons = await verify(js, letter)
    if reasons and not force:
        raise Untrusted(letter, reasons)
    headers = {k: v for k, v in letter.headers.items() if k not in _DLQ_HEADERS}
    original = headers.pop("Soma-Dlq-Original-Id", "") or f"dlq{seq}"
    headers[MSG_ID] = f"{original}-replay{seq}"
    if body is not None:
        headers[MSG_ID] += f"-edit{hashlib.sha256(body).hexdigest()[:12]}"
    await js.publish(letter.subject, letter.body if body is None else body, headers=headers)
    if delete:
        await js.delete_msg(STREAMS["dlq"], seq)
    return letter.subject


async def purge(js: JetStreamContext) -> int:
    before = (await info(js)).state.messages
    await js.purge_stream(STREAMS["dlq"])
    return before
