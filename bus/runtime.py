"""Running a service as a process: connect, check the streams, consume, expose health, stop.

Every replica of a service binds the same durable pull consumer, so replicas split the work and
no message is handled by two of them. Acks are explicit: ``bus.consume`` decides ack /
nak-with-delay / term for every message.

The pull loop is our own on nats-py (``Consumer``: up to ``SOMA_FETCH_BATCH`` messages in
hand, each handled as it arrives). FastStream's subscriber was measured here at about a quarter
of raw nats-py's throughput: its per-message pipeline (context, middlewares, dependency
injection) cost three times the work of handling the message. This loop keeps within reach of
raw nats-py (bench/bus.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.errors import BadRequestError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bus.config import BusSettings
from bus.connection import DEFAULT_URL, connect
from bus.consume import RetryPolicy, make_batch_processor, make_processor
from bus.errors import BusUnavailable
from bus.metrics import consumer_state, on_scrape
from bus.metrics import refresh as refresh_metrics
from bus.service import Clock, Connected, Handler, Service
from bus.streams import provision
from schemas.catalogue import STREAMS, by_name, of_type

log = logging.getLogger("soma.runtime")


@dataclass
class Running:
    """A started service: its client, JetStream context and loops, for tests and tools."""

    service: Service
    nc: Client
    js: JetStreamContext
    consumers: list[Consumer] = field(default_factory=list)
    health: uvicorn.Server | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def stop(self) -> None:
        """Stop fetching, finish the messages in hand, then close."""
        await asyncio.gather(*(c.stop() for c in self.consumers))
        if self.health is not None:
            self.health.should_exit = True
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        for hook in self.service.shutdown:
            await hook()
        with contextlib.suppress(Exception):
            await self.nc.drain()


def retry_policy(settings: BusSettings) -> RetryPolicy:
    return RetryPolicy(
        max_deliver=settings.max_deliver,
        initial=settings.retry_initial,
        maximum=settings.retry_maximum,
        heartbeat=max(settings.ack_wait / 3, 0.5),
    )


PULL_EXPIRES = 5.0  # seconds a pull request waits on the server for messages


class Consumer:
    """One durable pull consumer, fed continuously.

    A pull request asks the server for as many messages as there is room for and stays open
    for ``PULL_EXPIRES``; each message is handled the moment it arrives, and a new request goes
    out as room frees up or the old one expires. (nats-py's ``fetch`` waits to fill its whole
    batch once a message has arrived on a waiting request, which stalls a lone message by up
    to the fetch timeout.)
    """

    def __init__(
        self,
        bus: Connected,
        stream: str,
        config: ConsumerConfig,
        handle: Callable[[Msg], Awaitable[None]],
        concurrency: int,
    ) -> None:
        self.js = bus.js
        self.nc = bus.nc
        self.stream = stream
        self.config = config
        self.handle = handle
        self.available = concurrency  # how many more messages may be in hand
        self.requested = 0  # asked for and not yet delivered
        self.low_water = max(1, concurrency // 4)
        self.wake = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.running = False
        self.loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.js.add_consumer(self.stream, self.config)
        except BadRequestError as exc:
            # It exists with other settings (an older release): keep it, say so.
            log.warning("consumer %s kept as it is: %s", self.config.durable_name, exc)
        except (NatsTimeoutError, TimeoutError) as exc:
            raise BusUnavailable(
                f"no answer creating consumer {self.config.durable_name} on {self.stream} "
                f"(filter {self.config.filter_subject or self.config.filter_subjects}): is this "
                "NATS user allowed to create it? nats-accounts.conf grants each service its own "
                "durable with its own filter only"
            ) from exc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.config.durable_name}"
        # Under the connection's inbox prefix: the only place its user may subscribe.
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox, cb=self._arrived)
        self.running = True
        self.loop = asyncio.create_task(self._pull(), name=f"pull {self.config.durable_name}")

    async def _pull(self) -> None:
        while self.running:
            self.wake.clear()
            want = self.available - self.requested
            if want > 0 and (self.requested == 0 or want >= self.low_water):
                request = {"batch": want, "expires": int(PULL_EXPIRES * 1e9)}
                try:
                    await self.nc.publish(
                        self.next_subject, json.dumps(request).encode(), reply=self.inbox
                    )
                    self.requested += want
                except Exception as exc:  # disconnected: the reconnect loop is at work
                    log.debug("pull request not sent: %s", exc)
                    await asyncio.sleep(0.5)
                    continue
            try:
                await asyncio.wait_for(self.wake.wait(), PULL_EXPIRES + 1)
            except TimeoutError:
                self.requested = 0  # whatever was asked for has expired (or was lost)

    async def _arrived(self, msg: Msg) -> None:
        status = (msg.headers or {}).get(Header.STATUS) if not msg.data else None
        if status:
            # 408: the request expired with this many messages undelivered; 404/409: none.
            pending = (msg.headers or {}).get("Nats-Pending-Messages")
            self.requested = max(0, self.requested - int(pending)) if pending else 0
            self.wake.set()
            return
        self.requested = max(0, self.requested - 1)
        self.available -= 1
        self._dispatch(msg)

    def _dispatch(self, msg: Msg) -> None:
        task = asyncio.create_task(self._one(msg))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _one(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:  # the processor handles its own errors; this is a last resort
            log.exception("unexpected error handling %s", msg.subject)
        finally:
            self._freed(1)

    def _freed(self, n: int) -> None:
        self.available += n
        if self.available - self.requested >= self.low_water:
            self.wake.set()

    async def stop(self) -> None:
        self.running = False
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()
        if self.loop is not None:
            self.loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=30)


class BatchConsumer(Consumer):
    """A durable pull consumer whose messages are handled a batch at a time.

    Messages that arrive while a batch is being handled wait, and all of them go together as
    the next batch: one message alone goes at once, and under load each batch holds what came
    in during the last one (at most the consumer's concurrency). Batches run one after another.
    With a ``linger``, a batch that has room waits that long for more before it is handled.
    """

    def __init__(
        self,
        bus: Connected,
        stream: str,
        config: ConsumerConfig,
        handle_batch: Callable[[list[Msg]], Awaitable[None]],
        concurrency: int,
        linger: float = 0.0,
    ) -> None:
        super().__init__(bus, stream, config, self._unused, concurrency)
        self.handle_batch = handle_batch
        self.linger = linger
        self.waiting: list[Msg] = []
        self.worker: asyncio.Task[None] | None = None

    async def _unused(self, msg: Msg) -> None:
        raise RuntimeError("a batch consumer handles batches")

    def _dispatch(self, msg: Msg) -> None:
        self.waiting.append(msg)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
            self.in_flight.add(self.worker)
            self.worker.add_done_callback(self.in_flight.discard)

    async def _work(self) -> None:
        await asyncio.sleep(0)  # let the rest of a burst that arrived together join
        while self.waiting:
            if self.linger > 0 and self.available > 0:
                await asyncio.sleep(self.linger)  # and what comes in the next moments
            batch, self.waiting = self.waiting, []
            try:
                await self.handle_batch(batch)
            except Exception:  # the processor handles its own errors; this is a last resort
                log.exception("unexpected error handling a batch of %d", len(batch))
            finally:
                self._freed(len(batch))


def _consumer_config(durable: str, subjects: list[str], settings: BusSettings) -> ConsumerConfig:
    """A durable named ``durable`` reading ``subjects``.

    ``name`` is set as well as ``durable_name`` so that, with one filter subject, nats-py
    creates it through ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``: the server checks
    the filter in the request against the one in the subject, and nats-accounts.conf grants
    each service that one subject, so a service can make only its own durable with its own
    filter. (Several filters cannot travel in the subject; such a durable is created through
    ``CONSUMER.CREATE.<stream>.<name>``.)
    """
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        # Unlimited at the server: the runtime dead-letters by delivery count itself, so a
        # message whose deliveries were lost to crashes is never silently abandoned.
        max_deliver=-1,
        ack_wait=settings.ack_wait,
        max_ack_pending=settings.max_ack_pending,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
    )


def command_routes(service: Service) -> dict[str, Handler]:
    return {of_type(t).name: h for t, h in service.routes.items()}


async def start(
    service: Service,
    settings: BusSettings,
    *,
    health_port: int | None = None,
    clock: Clock = time.time,
) -> Running:
    """Start consuming for ``service``; returns once subscriptions are live.

    ``clock`` is the time the service's handlers read (``Connected.clock``): a test passes one
    it moves on itself.
    """
    url = settings.nats_url or DEFAULT_URL
    # Connect first (fail fast with a clear message), then check (or, with the right to,
    # provision) the streams, then subscribe.
    nc = await connect(url, f"soma-{service.name}", inbox_prefix=settings.nats_inbox_prefix)
    try:
        return await _consume(service, settings, nc, clock, health_port, url)
    except BaseException:
        # A start refused (streams not provisioned, a startup hook failing) must not leave a
        # client behind that reconnects for as long as the process lives.
        with contextlib.suppress(Exception):
            await nc.close()
        raise


async def _consume(
    service: Service,
    settings: BusSettings,
    nc: Client,
    clock: Clock,
    health_port: int | None,
    url: str,
) -> Running:
    js = nc.jetstream()
    await provision(js, settings)
    bus = Connected(nc, js, clock)
    for hook in service.startup:
        await hook(bus)

    policy = retry_policy(settings)
    running = Running(service, nc, js)
    if service.routes:
        process = make_processor(bus, service.name, command_routes(service), policy)
        config = _consumer_config(service.name, [f"soma.cmd.*.{service.name}.>"], settings)
        running.consumers.append(
            Consumer(bus, STREAMS["cmd"], config, process, settings.fetch_batch)
        )
    if service.event_routes and service.event_batches:
        raise ValueError(f"{service.name}: event_routes and event_batches share one consumer")
    if service.event_batches:
        followed = service.event_batches.names
        subjects = ["soma.evt.>"] if "*" in followed else [by_name(n).pattern for n in followed]
        config = _consumer_config(f"{service.name}-events", subjects, settings)
        batches = make_batch_processor(
            bus, service.name, followed, service.event_batches.handler, policy
        )
        running.consumers.append(
            BatchConsumer(
                bus,
                STREAMS["evt"],
                config,
                batches,
                settings.fetch_batch,
                service.event_batches.linger,
            )
        )
    if service.event_routes:
        process = make_processor(
            bus, service.name, dict(service.event_routes), policy, emit_replies=False
        )
        subjects = (
            ["soma.evt.>"]
            if "*" in service.event_routes
            else [by_name(name).pattern for name in service.event_routes]
        )
        config = _consumer_config(f"{service.name}-events", subjects, settings)
        running.consumers.append(
            Consumer(bus, STREAMS["evt"], config, process, settings.fetch_batch)
        )
    for consumer in running.consumers:
        await consumer.start()
    durables = [(c.stream, str(c.config.durable_name)) for c in running.consumers]
    on_scrape(functools.partial(consumer_state, js, durables))
    if health_port is not None:
        running.health, task = await _serve_health(service.name, nc, health_port, settings)
        running.tasks.append(task)
    log.info("%s consuming on %s", service.name, url)
    return running


def health_app(name: str, checks: dict[str, Callable[[], Awaitable[bool]]]) -> Starlette:
    """``/healthz`` (process alive), ``/readyz`` (dependencies answer), ``/metrics``."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", "service": name})

    async def readyz(_: Request) -> Response:
        results = {}
        for check, probe in checks.items():
            try:
                results[check] = bool(await asyncio.wait_for(probe(), 2))
            except Exception:
                results[check] = False
        ok = all(results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": results},
            status_code=200 if ok else 503,
        )

    async def metrics(_: Request) -> Response:
        await refresh_metrics()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


async def _serve_health(
    name: str, nc: Client, port: int, settings: BusSettings
) -> tuple[uvicorn.Server, asyncio.Task[Any]]:
    async def nats_ok() -> bool:
        return bool(nc.is_connected)

    app = health_app(name, {"nats": nats_ok})
    config = uvicorn.Config(app, host=settings.http_host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    # The process owns SIGINT/SIGTERM (to drain consumers); the health server must not take them.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    return server, task


async def serve(service: Service, settings: BusSettings, health_port: int | None) -> None:
    """Serve until cancelled, then drain in-flight messages and stop. Whoever runs the process
    turns SIGINT/SIGTERM into that cancellation (``kernel.processes``)."""
    running = await start(service, settings, health_port=health_port)
    where = f", health on :{health_port}" if health_port else ""
    print(f"{service.name}: consuming{where}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.stop()
