"""Answers of another process kept for a few seconds: API-key verdicts and keys' limits.

Why: the gateway asks identity over the bus, and a request must not pay that round trip each
time. An answer is reused for ``ttl`` seconds, so a change made elsewhere (a key revoked, a
budget raised) reaches this gateway within that time. Concurrent misses of one entry share one
lookup; a failed lookup is kept by nobody, so the next request asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

# Beyond this many entries the expired ones are dropped before another is kept.
_PRUNE_AT = 10_000


class Recent(Generic[V]):
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, V]] = {}
        self._pending: dict[Hashable, asyncio.Future[V]] = {}

    def put(self, key: Hashable, value: V) -> None:
        if self._ttl <= 0:
            return
        now = self._clock()
        if len(self._entries) > _PRUNE_AT:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        self._entries[key] = (now + self._ttl, value)

    def forget(self, drop: Callable[[Hashable, V], bool]) -> None:
        """Drop the entries ``drop`` names (what this gateway itself just changed)."""
        self._entries = {k: e for k, e in self._entries.items() if not drop(k, e[1])}

    async def get(self, key: Hashable, lookup: Callable[[], Awaitable[V]]) -> V:
        cached = self._entries.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await lookup()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked as retrieved: the waiters get it, nobody warns
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(value)
        self.put(key, value)
        return value
