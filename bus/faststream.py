"""Soma handlers written with FastStream: its subscribers, our envelope and delivery rules.

A service author who prefers FastStream's style (a typed function under a decorator, its
dependency injection and context) writes the handler with it, and this adapter makes the result
a Soma handler like any built-in one::

    service = SomaFastStream("shipping")

    @service.command(ShippingQuote)
    async def quote(cmd: ShippingQuote, env: SomaEnvelope) -> ShippingQuoted:
        return ShippingQuoted(order_id=cmd.order_id, cents=..., quoted_for=env.actor)

``service.broker`` is a plain FastStream ``NatsBroker``; ``service.command`` is its
``subscriber`` on the command's subject, bound to a durable pull consumer of the commands
stream. Each message goes through ``bus.consume``'s processor, the one every built-in handler
uses, with FastStream's handler call in place of a route: the envelope is decoded from the
headers (tenant, correlation, causation, actor — ``SomaEnvelope`` hands it to the function), the
payload is checked against the catalogue, the returned event is published with Soma's headers
and a ``Nats-Msg-Id`` derived from the command's id, a refusal (``bus.errors.Invalid``,
``NotFound`` …) becomes ``<service>.failed`` with its code, other errors are retried with
backoff and end as dead letters. Sagas, ``soma tail`` and ``soma dlq`` cannot tell it from a
built-in handler.

The object itself is the process's entry point: ``soma up --with shipping=pkg.module:service``
(or ``SOMA_PROCESSES=…,shipping=pkg.module:service``) runs it like any handler, with health,
readiness and metrics on ``SOMA_HEALTH_PORT``.

What it costs: FastStream's per-message pipeline (context, middlewares, dependency injection)
comes on top of ours; README's "Writing a handler" gives the measured figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Annotated, Any

import uvicorn
from faststream import Context
from faststream.middlewares import AckPolicy, BaseMiddleware
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as ServerAckPolicy
from nats.js.api import DeliverPolicy

from bus.config import BusSettings
from bus.connection import DEFAULT_URL, connection_options, unreachable_message, watch
from bus.consume import RetryPolicy, make_processor
from bus.errors import BusUnavailable
from bus.runtime import health_app, retry_policy
from bus.service import Connected
from bus.streams import provision
from schemas.catalogue import STREAMS, by_subject, of_type
from schemas.envelope import Envelope

ENVELOPE = "soma_envelope"  # the FastStream context key the envelope is set under

SomaEnvelope = Annotated[Envelope, Context(ENVELOPE)]
"""A handler parameter of this type receives the command's envelope."""


async def decode_payload(message: Any) -> Any:
    """FastStream's decoder: the body as the catalogue's type for the message's subject."""
    raw: Msg = message.raw_message
    return by_subject(raw.subject).decode(raw.data)


class SomaFastStream:
    """A FastStream broker serving one Soma service's commands (see the module docstring).

    ``concurrency`` is how many commands one replica handles at once. The server's ack wait,
    the retry policy and the NATS URL come from the process's settings when it starts
    (``SOMA_ACK_WAIT``, ``SOMA_MAX_DELIVER``, ``NATS_URL`` …), as for a built-in handler.
    """

    def __init__(
        self,
        service: str,
        *,
        concurrency: int = 16,
        broker: NatsBroker | None = None,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.policy = RetryPolicy()
        self._processors: dict[int, Callable[[Msg], Awaitable[None]]] = {}
        self._consumers: list[ConsumerConfig] = []  # set from the settings at start
        # No FastStream serializer: the decoder already returns the catalogue's typed Struct,
        # validated exactly as a built-in handler validates it.
        # Its per-message lines at DEBUG: the runtime logs outcomes worth a look (refusals,
        # retries, dead letters) itself, as for every built-in handler.
        self.broker = broker or NatsBroker(
            serializer=None,
            decoder=decode_payload,
            middlewares=[self._middleware],
            log_level=logging.DEBUG,
        )

    def command(self, command_type: type, *, durable: str | None = None) -> Any:
        """``broker.subscriber`` for one command type: a decorator for its handler.

        The durable is named ``<service>-<verb>``, so each command type is its own consumer
        and replicas of this process share it.
        """
        entry = of_type(command_type)
        if entry.kind != "cmd" or entry.service != self.service:
            raise ValueError(
                f"{entry.name} is not a command of {self.service!r}; a FastStream handler of "
                f"{self.service!r} subscribes to its own commands"
            )
        name = durable or f"{self.service}-{entry.token}"
        config = ConsumerConfig(
            durable_name=name,
            ack_policy=ServerAckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,  # the processor dead-letters by delivery count, as the runtime does
            ack_wait=30.0,  # replaced by the settings' at start
            max_ack_pending=self.concurrency * 4,
        )
        self._consumers.append(config)
        return self.broker.subscriber(
            entry.pattern,
            stream=JStream(STREAMS["cmd"], declare=False),
            durable=name,
            config=config,
            pull_sub=PullSub(batch_size=self.concurrency, timeout=5.0),
            max_workers=self.concurrency,
            ack_policy=AckPolicy.MANUAL,  # the processor acks, naks or terms
        )

    def _processor(self, client: Client) -> Callable[[Msg], Awaitable[None]]:
        process = self._processors.get(id(client))
        if process is None:
            bus = Connected(client, client.jetstream())
            process = make_processor(bus, self.service, {"*": _call_faststream}, self.policy)
            self._processors[id(client)] = process
        return process

    def _middleware(self, msg: Any, /, *, context: Any) -> BaseMiddleware:
        return _EnvelopeMiddleware(msg, context=context, owner=self)

    def __call__(self, settings: BusSettings) -> Awaitable[None]:
        """The process entry point ``soma run`` calls: serve until cancelled."""
        return self.serve(settings, health_port=getattr(settings, "health_port", None))

    async def start(self, settings: BusSettings) -> Client:
        """Connect to ``settings.nats_url``, check the streams, start the subscribers."""
        self.policy = retry_policy(settings)
        for config in self._consumers:
            config.ack_wait = settings.ack_wait
        # FastStream takes its connection options at construction; the settings come later.
        url = settings.nats_url or DEFAULT_URL
        options = self.broker._connection_kwargs
        options.update(connection_options(url, f"soma-{self.service}", settings.nats_inbox_prefix))
        options["max_reconnect_attempts"] = 2  # fail fast if it never was up, as connect() does
        try:
            client: Client = await self.broker.connect()
        except Exception as exc:
            raise BusUnavailable(unreachable_message(url, exc)) from exc
        client.options["max_reconnect_attempts"] = -1
        watch(options, client)
        await provision(client.jetstream(), settings)
        await self.broker.start()
        return client

    async def stop(self) -> None:
        await self.broker.stop()
        self._processors.clear()

    async def serve(self, settings: BusSettings, *, health_port: int | None = None) -> None:
        """``start``, serve health on ``health_port``, consume until cancelled, ``stop``."""
        client = await self.start(settings)
        health: uvicorn.Server | None = None
        if health_port is not None:

            async def nats_ok() -> bool:
                return bool(client.is_connected)

            app = health_app(self.service, {"nats": nats_ok})
            health = uvicorn.Server(
                uvicorn.Config(app, host=settings.http_host, port=health_port, log_level="warning")
            )
            health.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
            asyncio.create_task(health.serve())
        print(f"{self.service}: consuming with FastStream", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            if health is not None:
                health.should_exit = True
            await self.stop()


# The FastStream call of the message in hand, for the processor's one route.
_current: ContextVar[tuple[Any, Any, Any]] = ContextVar("soma_faststream_call")


async def _call_faststream(payload: Any, env: Envelope) -> Any:
    """The processor's route: FastStream's own call (decoder, dependencies, the function)."""
    call_next, msg, context = _current.get()
    with context.scope(ENVELOPE, env):
        return await call_next(msg)


class _EnvelopeMiddleware(BaseMiddleware):  # type: ignore[type-arg]
    """Hands each message to ``bus.consume``'s processor, which calls FastStream back."""

    def __init__(self, msg: Any, /, *, context: Any, owner: SomaFastStream) -> None:
        super().__init__(msg, context=context)
        self.owner = owner

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        raw: Msg = msg.raw_message
        token = _current.set((call_next, msg, self.context))
        try:
            await self.owner._processor(raw._client)(raw)
        finally:
            _current.reset(token)
        return None  # the reply is published; FastStream has nothing left to send
