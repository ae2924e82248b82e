"""What each API key and tenant has spent, kept by every gateway from the usage events it watches.

Why here, and not a counter in Redis or a key-value bucket written by analytics: a budget check
sits on the hot path of every chat turn, so it must cost no bus round trip; the usage events
(``slm.completed``, each with its tenant, ``key_id`` and ``cost_usd``) are the record of spend
the budget is about, and they already reach the gateway's stream. Each gateway follows them
with an ordered ephemeral consumer on the events stream, filtered to model completions, from
``lookback`` seconds ago (the longest budget window it must be able to sum; the stream keeps
events ``SOMA_EVENTS_MAX_AGE``), so a gateway that starts or reconnects reads the spend of the
open windows back from the stream and needs nothing else running — not analytics, not Redis.
Every gateway replica sees every event, so replicas agree within the watch's delay; a turn that
finishes while a request is admitted may overrun a budget by that one turn, which is why a
budget is a cap on what is *started*, checked before each request.

Each key and tenant keeps its completions' times with running totals, so the spend of a window
of any length is exact (a budget changed now counts nothing spent before now). A message seen
twice (an ordered consumer restarted after a reconnect reads from the lookback again) is
counted once: the ledger remembers the message ids it counted while inside the lookback.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas.catalogue import STREAMS
from schemas.envelope import Envelope, EnvelopeError
from schemas.slm import SlmCompleted

log = logging.getLogger("soma.gateway")

# Completions of every tenant: soma.evt.<tenant>.slm.completed
USAGE_SUBJECT = "soma.evt.*.slm.completed"
_COMPLETED = msgspec.json.Decoder(SlmCompleted)


class _Account:
    """Spend of one key or tenant: each completion's time and the running total up to it, in
    time order, so the spend between two moments is two binary searches and a subtraction."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.totals: list[float] = []

    def add(self, at: float, usd: float) -> None:
        index = bisect.bisect_right(self.times, at)
        before = self.totals[index - 1] if index else 0.0
        self.times.insert(index, at)
        self.totals.insert(index, before + usd)
        for later in range(index + 1, len(self.totals)):  # only when events come out of order
            self.totals[later] += usd

    def _upto(self, moment: float) -> float:
        """The total of completions strictly before ``moment``."""
        index = bisect.bisect_left(self.times, moment)
        return self.totals[index - 1] if index else 0.0

    def since(self, start: float, end: float | None = None) -> float:
        last = self.totals[-1] if self.totals else 0.0
        return (last if end is None else self._upto(end)) - self._upto(start)

    def prune(self, before: float) -> None:
        index = bisect.bisect_left(self.times, before)
        if index:
            del self.times[:index]
            del self.totals[:index]


class SpendLedger:
    """Spend per key and per tenant from the usage events, answering from memory."""

    def __init__(self, lookback: float) -> None:
        self.lookback = lookback
        self._keys: dict[str, _Account] = {}
        self._tenants: dict[str, _Account] = {}
        self._counted: dict[str, float] = {}

    def record(
        self, message_id: str, tenant: str, key_id: str | None, at: float, usd: float
    ) -> bool:
        """Count one completion; False when this message was counted already."""
        if message_id in self._counted:
            return False
        self._counted[message_id] = at
        if usd:
            self._tenants.setdefault(tenant, _Account()).add(at, usd)
            if key_id:
                self._keys.setdefault(key_id, _Account()).add(at, usd)
        return True

    def key_spend(self, key_id: str, start: float, end: float | None = None) -> float:
        account = self._keys.get(key_id)
        return account.since(start, end) if account is not None else 0.0

    def tenant_spend(self, tenant: str, start: float, end: float | None = None) -> float:
        account = self._tenants.get(tenant)
        return account.since(start, end) if account is not None else 0.0

    def prune(self, now: float) -> None:
        before = now - self.lookback
        for accounts in (self._keys, self._tenants):
            for account in accounts.values():
                account.prune(before)
        self._counted = {m: at for m, at in self._counted.items() if at >= before}


class SpendFollower:
    """Feeds a ``SpendLedger`` from the events stream, restarting the watch when it breaks."""

    def __init__(
        self,
        js: JetStreamContext,
        ledger: SpendLedger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self.ledger = ledger
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.caught_up = asyncio.Event()

    def apply(self, headers: dict[str, str] | None, data: bytes) -> None:
        try:
            env = Envelope.from_headers(headers)
            event = _COMPLETED.decode(data)
        except (EnvelopeError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("spend: ignoring an unreadable completion: %s", exc)
            return
        self.ledger.record(env.message_id, env.tenant, event.key_id, env.timestamp, event.cost_usd)

    async def _follow(self) -> None:
        # Real time here, not the injected clock: the stream's timestamps are the servers'.
        start = datetime.fromtimestamp(time.time() - self.ledger.lookback, UTC)
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            inactive_threshold=30.0,
        )
        sub: Any = await self._js.subscribe(
            USAGE_SUBJECT, stream=STREAMS["evt"], ordered_consumer=True, config=config
        )
        try:
            pending = True
            while True:
                # Until caught up, a short quiet spell means the stream holds nothing more:
                # a gateway over an empty stream starts at once.
                quiet = 1.0 if self.caught_up.is_set() else 0.25
                try:
                    msg = await sub.next_msg(timeout=quiet)
                except TimeoutError:  # nats' own timeout is one too: nothing new for a second
                    self.caught_up.set()
                    self.ledger.prune(self._clock())
                    continue
                self.apply(dict(msg.headers or {}), msg.data)
                if pending and msg.metadata.num_pending == 0:
                    pending = False
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _forever(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching usage for budgets failed (retrying): %s", exc)
            await asyncio.sleep(1.0)

    async def start(self, wait: float = 5.0) -> None:
        """Follow the usage events; wait (a little) until what the stream holds is read."""
        self._task = asyncio.create_task(self._forever())
        try:
            await asyncio.wait_for(self.caught_up.wait(), wait)
        except TimeoutError:
            log.warning("spend: the usage events are not read back yet (still reading)")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
