"""The analytics process: follows the events stream into daily rollups and answers usage reports.

Composition root. Its own durable consumer (``analytics-events``) reads model completions and
failures and saga starts and ends; the rollups live in the shared SQL database. Other events on
the stream are acknowledged and skipped by the runtime.

Counting is idempotent by event message id (see ``rollups``), so redeliveries, several replicas
and a replay of the stream all leave the totals as the events say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from bus.errors import Rejected
from bus.service import Handler, Service
from handlers.analytics import rollups
from handlers.analytics.report import InvalidWindow, bounds, report, window
from schemas.analytics import AnalyticsReport, AnalyticsReported
from schemas.common import CommandFailed
from schemas.envelope import Envelope
from schemas.sagas import SagaFinished, SagaStarted
from schemas.slm import SlmCompleted
from soma.db import make_engine, migrate
from soma.settings import Settings

log = logging.getLogger(__name__)

# Counted event ids outlive the events stream's retention by a day, so no replay of what the
# stream still holds can be counted twice.
KEEP_MARGIN = 86400.0


@dataclass
class _Opened:
    engine: AsyncEngine | None = None
    # SQLite takes one writer at a time: queue this process's writers here rather than in
    # SQLite's busy wait, which sleeps and retries (it halves the throughput of a backlog).
    writers: asyncio.Lock | None = None

    def require(self) -> AsyncEngine:
        if self.engine is None:
            raise RuntimeError("analytics service used before its startup hooks ran")
        return self.engine

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncEngine]:
        engine = self.require()
        if self.writers is None:
            yield engine
            return
        async with self.writers:
            yield engine


async def answer(
    engine: AsyncEngine, cmd: AnalyticsReport, env: Envelope
) -> AnalyticsReported:
    """The envelope's tenant's usage; a caller never sees another tenant's."""
    try:
        first, last = window(cmd.since, cmd.until)
    except InvalidWindow as exc:
        raise Rejected(str(exc)) from exc
    since, until = bounds(first, last)
    rows = await report(engine, env.tenant, cmd.since, cmd.until, cmd.group_by)
    return AnalyticsReported(rows=rows, since=since, until=until)


def event_routes(opened: _Opened) -> dict[str, Handler]:
    """Schema name → handler for each event that changes the rollups."""

    async def on_completed(event: SlmCompleted, env: Envelope) -> None:
        async with opened.writing() as engine:
            await rollups.model_completed(engine, event, env)

    async def on_slm_failed(event: CommandFailed, env: Envelope) -> None:
        if event.command == "slm.complete":
            async with opened.writing() as engine:
                await rollups.model_failed(engine, event, env)

    async def on_started(event: SagaStarted, env: Envelope) -> None:
        async with opened.writing() as engine:
            await rollups.saga_started(engine, event, env)

    async def on_finished(event: SagaFinished, env: Envelope) -> None:
        async with opened.writing() as engine:
            await rollups.saga_finished(engine, event, env)

    async def on_sagas_failed(event: CommandFailed, env: Envelope) -> None:
        if event.command == "sagas.start":
            async with opened.writing() as engine:
                await rollups.saga_refused(engine, event, env)

    return {
        "slm.completed": on_completed,
        "slm.failed": on_slm_failed,
        "sagas.started": on_started,
        "sagas.finished": on_finished,
        "sagas.failed": on_sagas_failed,
    }


def build(settings: Settings) -> Service:
    database_url = settings.resolved_database_url()
    opened = _Opened()

    async def start() -> None:
        await migrate(database_url)
        opened.engine = make_engine(database_url)
        if opened.engine.dialect.name == "sqlite":
            opened.writers = asyncio.Lock()
        if settings.events_max_age <= 0:
            return  # the stream keeps events for ever: so are their ids
        forgotten = await rollups.prune(
            opened.engine, time.time() - settings.events_max_age - KEEP_MARGIN
        )
        if forgotten:
            log.info("forgot %d counted event ids and sagas past the stream's retention", forgotten)

    async def stop() -> None:
        if opened.engine is not None:
            await opened.engine.dispose()
            opened.engine = None

    async def on_report(cmd: AnalyticsReport, env: Envelope) -> AnalyticsReported:
        return await answer(opened.require(), cmd, env)

    return Service(
        name="analytics",
        routes={AnalyticsReport: on_report},
        startup=[start],
        shutdown=[stop],
        event_routes=event_routes(opened),
    )
