"""What a handler process is: a name, a routing table of commands, and its lifecycle hooks.

A handler module builds one ``Service`` at its composition root (``build(settings)``); the
runtime in ``bus.consume`` does everything else (subscribe, decode, dedup, ack, retry, dead-letter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.envelope import Envelope

Handler = Callable[[Any, Envelope], Awaitable[Any]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Service:
    name: str
    routes: dict[type, Handler]
    startup: list[Hook] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)
    # Events this service follows: schema name (or "*" for every event) -> handler(event, env).
    event_routes: dict[str, Handler] = field(default_factory=dict)
