"""Request/await for callers that need an outcome (the gateway).

Every caller process holds core-NATS subscriptions to the events of interest and resolves
waiters by correlation id. They are registered before the command is published, so a fast reply
is never missed, and each gateway replica only ever waits on correlation ids it created — several
replicas are correct without coordination.

Which events: one subject for all (``subject``, every event of the bus by default), or, with
``subject=None``, only the event types its waiters name (``follow``), one subscription per type,
made on first use and kept. A process that follows every event pays for every event on the bus,
whoever it is for: an idle gateway spent 2.2 ms of CPU per chat turn of another gateway's
(``bench/gateway.py``), and with N replicas each turn costs N times that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from bus.errors import RequestTimeout
from bus.publish import Published, envelope_for, publish
from bus.service import Connected
from schemas.catalogue import UnknownMessage, by_name, by_subject, of_type
from schemas.envelope import CORRELATION_ID, Envelope, EnvelopeError


@dataclass(frozen=True)
class Reply:
    envelope: Envelope
    schema: str
    payload: Any


def decode_reply(msg: Msg) -> Reply | None:
    """The event in ``msg`` with its envelope; None for one that is not a valid event of ours."""
    try:
        env = Envelope.from_headers(msg.headers)
        entry = by_subject(msg.subject)
        payload = entry.decode(msg.data)
    except (EnvelopeError, UnknownMessage, msgspec.ValidationError, msgspec.DecodeError):
        return None
    return Reply(env, entry.name, payload)


class Requester:
    def __init__(
        self, nc: Client, js: JetStreamContext, subject: str | None = "soma.evt.>"
    ) -> None:
        self.nc = nc
        self.js = js
        self.bus = Connected(nc, js)  # what its commands are published on
        self._subject = subject
        # Several waiters may watch one correlation id at once (two requests naming the same
        # task): each gets every event of it.
        self._waiters: dict[str, list[asyncio.Queue[Reply]]] = {}
        self._subs: dict[str, Subscription] = {}
        self._subscribing = asyncio.Lock()

    async def start(self) -> None:
        if self._subject is not None:
            self._subs[self._subject] = await self.nc.subscribe(self._subject, cb=self._on_event)

    async def close(self) -> None:
        subs, self._subs = list(self._subs.values()), {}
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def follow(self, events: Iterable[str]) -> None:
        """Receive the events named (``sagas.replied``) from now on; a requester on one subject
        for all has nothing to add. The subscription reaches the server before anything this
        connection publishes afterwards, so a command published next cannot be answered first."""
        if self._subject is not None:
            return
        patterns = [_pattern(name) for name in events]
        if all(p in self._subs for p in patterns):
            return
        async with self._subscribing:
            for pattern in patterns:
                if pattern not in self._subs:
                    self._subs[pattern] = await self.nc.subscribe(pattern, cb=self._on_event)

    async def _on_event(self, msg: Msg) -> None:
        # Every event of the bus passes here: only the correlation header is read, and an event
        # is decoded only when a waiter of this process awaits it.
        headers = msg.headers
        if not headers:
            return
        queues = self._waiters.get(headers.get(CORRELATION_ID, ""))
        if not queues:
            return
        reply = decode_reply(msg)
        if reply is not None:
            for queue in queues:
                queue.put_nowait(reply)

    @contextlib.asynccontextmanager
    async def watching(
        self, correlation_id: str, events: Iterable[str] = ()
    ) -> AsyncIterator[asyncio.Queue[Reply]]:
        """Receive the events of ``correlation_id`` while the block runs: those named in
        ``events`` (every one, on a requester that follows all)."""
        await self.follow(events)
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._waiters.setdefault(correlation_id, []).append(queue)
        try:
            yield queue
        finally:
            queues = self._waiters.get(correlation_id, [])
            if queue in queues:
                queues.remove(queue)
            if not queues:
                self._waiters.pop(correlation_id, None)

    async def request(
        self,
        message: msgspec.Struct,
        *,
        tenant: str,
        expect: set[str],
        timeout: float = 30.0,
        actor: str = "system",
        correlation_id: str | None = None,
    ) -> tuple[Published, Reply]:
        """Publish ``message``; return the first event named in ``expect`` or its own failure."""
        env = envelope_for(message, tenant=tenant, actor=actor, correlation_id=correlation_id)
        refusal = f"{of_type(type(message)).service}.failed"
        async with self.watching(env.correlation_id, {*expect, refusal}) as queue:
            published = await publish(self.bus, message, env)
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        reply = await queue.get()
                        if reply.schema in expect or (
                            reply.schema.endswith(".failed")
                            and reply.envelope.causation_id == env.message_id
                        ):
                            return published, reply
            except TimeoutError:
                raise RequestTimeout(
                    f"no {' or '.join(sorted(expect))} for {env.schema} "
                    f"(correlation {env.correlation_id}) within {timeout:.0f}s; "
                    "is the handler running? `soma streams` shows consumer lag"
                ) from None


def _pattern(event: str) -> str:
    """The subject of every tenant's ``event`` (``soma.evt.*.sagas.replied``)."""
    try:
        return by_name(event).pattern
    except UnknownMessage:  # a service author's type not registered here: its subject as named
        return f"soma.evt.*.{event}"
