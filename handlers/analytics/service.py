"""The analytics process: follows the events stream into daily rollups and answers usage reports.

Composition root. Its own durable consumer (``analytics-events``) reads model completions and
failures, saga starts and ends, and the ends of direct chat turns, a batch at a time: each batch
is counted in one transaction and acked after its commit. The rollups live in the analytics
database (its own SQLite file by default, so counting never holds the write lock of the stores a
chat turn writes).

Counting is idempotent by event message id (see ``rollups``), so redeliveries, several replicas
and a replay of the stream all leave the totals as the events say.
"""

from __future__ import annotations

import logging
import os

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.errors import Invalid
from bus.service import Connected, Delivery, EventBatches, Service
from handlers.analytics import rollups
from handlers.analytics.report import InvalidWindow, bounds, report, window
from kernel.db import dispose, make_engine, migrate
from kernel.settings import Settings
from schemas.analytics import AnalyticsReport, AnalyticsReported
from schemas.envelope import Envelope

log = logging.getLogger(__name__)

# How long a batch of events waits for more: counting is a transaction per batch, and a report
# a quarter second behind costs nobody anything.
LINGER = 0.25
# The process's scheduling priority (a nice value): counting never needs the CPU before a turn
# does, and on a small machine every turn's processes share the cores with it.
NICE = 10

# Counted event ids outlive the events stream's retention by a day, so no replay of what the
# stream still holds can be counted twice.
KEEP_MARGIN = 86400.0


async def answer(engine: AsyncEngine, cmd: AnalyticsReport, env: Envelope) -> AnalyticsReported:
    """The envelope's tenant's usage; a caller never sees another tenant's."""
    try:
        first, last = window(cmd.since, cmd.until)
    except InvalidWindow as exc:
        raise Invalid(str(exc)) from exc
    since, until = bounds(first, last)
    rows = await report(engine, env.tenant, cmd.since, cmd.until, cmd.group_by)
    return AnalyticsReported(rows=rows, since=since, until=until)


def event_batches(engine: AsyncEngine) -> EventBatches:
    """The events that change the rollups, counted a batch (whatever is in hand) per transaction:
    the store's write lock is taken once per batch, not once per event."""

    async def count(batch: list[Delivery]) -> None:
        await rollups.count_batch(engine, ((d.name, d.payload, d.env) for d in batch))

    return EventBatches(names=rollups.FOLLOWED, handler=count, linger=LINGER)


def yield_the_cpu() -> None:
    """Lower this thread's priority (and so that of the threads it starts, the store's among
    them) to ``NICE``, unless it is lower already."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < NICE:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError as exc:  # not permitted here: counting still works, at the usual priority
        log.info("analytics keeps its scheduling priority: %s", exc)


def build(settings: Settings) -> Service:
    database_url = settings.resolved_database_url("analytics")
    engine = make_engine(database_url)  # connects on first use, after the migration

    async def start(bus: Connected) -> None:
        yield_the_cpu()
        await migrate(database_url, "analytics")
        if settings.events_max_age <= 0:
            return  # the stream keeps events for ever: so are their ids
        forgotten = await rollups.prune(engine, bus.clock() - settings.events_max_age - KEEP_MARGIN)
        if forgotten:
            log.info("forgot %d counted event ids and sagas past the stream's retention", forgotten)

    async def stop() -> None:
        await dispose(engine)

    async def on_report(cmd: AnalyticsReport, env: Envelope) -> AnalyticsReported:
        return await answer(engine, cmd, env)

    return Service(
        name="analytics",
        routes={AnalyticsReport: on_report},
        startup=[start],
        shutdown=[stop],
        event_batches=event_batches(engine),
    )
