"""What a handler process is: a name, a routing table of commands, and its lifecycle hooks.

A handler module builds one ``Service`` at its composition root (``build(settings)``); the
runtime in ``bus.consume`` does everything else (subscribe, decode, dedup, ack, retry, dead-letter).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from schemas.envelope import Envelope

Handler = Callable[[Any, Envelope], Awaitable[Any]]
Hook = Callable[[], Awaitable[None]]
# Seconds since the epoch, as ``time.time`` gives them.
Clock = Callable[[], float]


@dataclass(frozen=True)
class Connected:
    """What the runtime hands each startup hook: the connection it serves the service on, made
    before the hooks run, so no handler opens a second one of its own, and the clock it reads
    the time from, so a test can move time on (an expiry, a budget window) without sleeping.

    It is also what ``bus.publish.publish`` sends on: the JetStream context to publish with
    and the connection whose server says how large a message may be.
    """

    nc: Client
    js: JetStreamContext
    clock: Clock = time.time


Startup = Callable[[Connected], Awaitable[None]]


@dataclass(frozen=True)
class Delivery:
    """One decoded message of a batch: its schema name, payload and envelope."""

    name: str
    payload: Any
    env: Envelope


BatchHandler = Callable[[list[Delivery]], Awaitable[None]]


@dataclass(frozen=True)
class EventBatches:
    """Events taken a batch at a time, for a handler whose cost is per transaction rather than
    per event: it receives every event in hand at once, and they are acked together after it
    returns. A batch that fails is handled again one event at a time, so one bad event never
    holds back (or dead-letters) the others.
    """

    names: tuple[str, ...]  # schema names followed, or ("*",) for every event
    handler: BatchHandler
    # Seconds a batch waits for more events before it is handled: a follower off every turn's
    # path (analytics) trades that much freshness for fewer, larger transactions.
    linger: float = 0.0


@dataclass
class Service:
    name: str
    routes: dict[type, Handler]
    startup: list[Startup] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)
    # Events this service follows: schema name (or "*" for every event) -> handler(event, env).
    event_routes: dict[str, Handler] = field(default_factory=dict)
    # Or the events it follows a batch at a time (not both: they share one durable consumer).
    event_batches: EventBatches | None = None
