"""Running a service as a process: connect, provision, consume, expose health, stop cleanly.

Every replica of a service binds the same durable pull consumer, so replicas split the work and
no message is handled by two of them. FastStream owns the subscription loop; the ack policy is
MANUAL because ``bus.consume`` decides ack / nak-with-delay / term for every message (FastStream's
NATS default would terminate a message on its first exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bus.connection import connection_options, unreachable_message
from bus.consume import RetryPolicy, make_processor
from bus.errors import BusUnavailable
from bus.service import Handler, Service
from bus.streams import provision
from schemas.catalogue import STREAMS, by_name, of_type
from soma.settings import Settings

log = logging.getLogger("soma.runtime")


@dataclass
class Running:
    """A started service: its broker, raw client and JetStream context, for tests and tools."""

    service: Service
    broker: NatsBroker
    nc: Client
    js: JetStreamContext
    health: uvicorn.Server | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def stop(self) -> None:
        if self.health is not None:
            self.health.should_exit = True
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.broker.stop()
        for hook in self.service.shutdown:
            await hook()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_deliver=settings.max_deliver,
        initial=settings.retry_initial,
        maximum=settings.retry_maximum,
        heartbeat=max(settings.ack_wait / 3, 0.5),
    )


def _consumer(
    broker: NatsBroker,
    durable: str,
    stream: str,
    subjects: list[str],
    handle: Callable[[Any], Awaitable[None]],
    settings: Settings,
) -> None:
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=JsAckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        # Unlimited at the server: the runtime dead-letters by delivery count itself, so a
        # message whose deliveries were lost to crashes is never silently abandoned.
        max_deliver=-1,
        ack_wait=settings.ack_wait,
        max_ack_pending=settings.max_ack_pending,
        filter_subjects=subjects if len(subjects) > 1 else None,
        filter_subject=subjects[0] if len(subjects) == 1 else None,
    )
    subscriber = broker.subscriber(
        subjects[0] if len(subjects) == 1 else "",
        stream=JStream(stream, declare=False),
        durable=durable,
        config=config,
        pull_sub=PullSub(batch_size=settings.fetch_batch, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_body,
        title=durable,
    )

    @subscriber
    async def _on_message(body: bytes, message: NatsMessage) -> None:
        await handle(message.raw_message)


async def _raw_body(message: NatsMessage) -> bytes:
    return message.body


def command_routes(service: Service) -> dict[str, Handler]:
    return {of_type(t).name: h for t, h in service.routes.items()}


async def start(service: Service, settings: Settings, *, health_port: int | None = None) -> Running:
    """Start consuming for ``service``; returns once subscriptions are live."""
    url = settings.nats_url or "nats://127.0.0.1:4222"
    broker = NatsBroker(**connection_options(url, f"soma-{service.name}"), logger=None)
    # Connect first (fail fast with a clear message), then provision, then subscribe.
    try:
        await asyncio.wait_for(broker.connect(), timeout=10)
    except Exception as exc:
        raise BusUnavailable(unreachable_message(url, exc)) from exc
    nc = broker.connection
    js = nc.jetstream()
    await provision(js, settings)
    for hook in service.startup:
        await hook()

    policy = retry_policy(settings)
    if service.routes:
        process = make_processor(js, service.name, command_routes(service), policy)
        subjects = [f"soma.cmd.*.{service.name}.>"]
        _consumer(broker, service.name, STREAMS["cmd"], subjects, process, settings)
    if service.event_routes:
        process = make_processor(
            js, service.name, dict(service.event_routes), policy, emit_replies=False
        )
        subjects = (
            ["soma.evt.>"]
            if "*" in service.event_routes
            else [by_name(name).pattern for name in service.event_routes]
        )
        _consumer(broker, f"{service.name}-events", STREAMS["evt"], subjects, process, settings)
    await broker.start()
    running = Running(service, broker, nc, js)
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
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


async def _serve_health(
    name: str, nc: Client, port: int, settings: Settings
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


async def serve_forever(service: Service, settings: Settings, health_port: int | None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight messages and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    running = await start(service, settings, health_port=health_port)
    where = f", health on :{health_port}" if health_port else ""
    print(f"{service.name}: consuming{where}", flush=True)
    await stop.wait()
    await running.stop()
