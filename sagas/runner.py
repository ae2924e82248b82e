"""The saga runner process: consumes saga commands and every event, fires timers, relays the outbox.

Any number of runners may run against one database: each trigger is one transaction guarded by
the inbox, row locks (PostgreSQL) and the rev check, so no instance is advanced twice.
On start a runner sweeps the outbox and the timer table, which recovers every instance that was
mid-step when some process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bus import errors, metrics, runtime
from bus.connection import connect
from bus.service import Connected, Service
from kernel.db import dispose, make_engine, migrate, reader
from kernel.settings import Settings
from sagas import list_query, queries, tables
from sagas.definition import Definition
from sagas.engine import Engine
from sagas.registry import Registry, installed_definitions
from sagas.relay import Relay
from sagas.turns import TurnWatch
from schemas.envelope import Envelope
from schemas.sagas import (
    Part,
    SagaCancel,
    SagaFinished,
    SagaInfo,
    SagaList,
    SagaListed,
    SagaQueried,
    SagaQuery,
    SagaRetried,
    SagaRetry,
    SagaSignal,
    SagaStart,
    SagaStarted,
    SagaStep,
    SagaTerminate,
    Waiting,
)

log = logging.getLogger("soma.sagas.runner")

TIMER_INTERVAL = 0.2
SWEEP_INTERVAL = 0.5
TURNS_INTERVAL = 1.0  # seconds between looks for direct turns past their deadline
FORGET_EVERY = 60  # of those looks, one in this many drops the rows of long-ended turns


def default_definitions() -> list[Definition[Any]]:
    """The shipped definitions and those of installed packages (``soma.sagas`` entry points)."""
    from sagas.definitions import ALL

    return [*ALL, *installed_definitions()]


@dataclass
class Runner:
    engine: Engine
    relay: Relay | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    waking: set[str] = field(default_factory=set)
    running: runtime.Running | None = None
    db: AsyncEngine | None = None
    committer: asyncio.Task[Any] | None = None
    turns: TurnWatch | None = None
    bus: Connected | None = None  # the runtime's connection, once it has started

    async def on_commit(self, outbox: list[dict[str, Any]], wake_now: list[str]) -> None:
        if self.relay is not None and outbox:
            try:
                await self.relay.publish(outbox)
            except Exception as exc:  # the sweep will publish them
                log.warning("relay publish failed, will retry from the outbox: %s", exc)
        for saga_id in wake_now:
            self._spawn(self.wake(saga_id, continuing=True))

    async def wake(self, saga_id: str, *, continuing: bool = False) -> None:
        """One wake per instance at a time: the timer pass skips those already being woken."""
        if saga_id in self.waking and not continuing:
            return
        self.waking.add(saga_id)
        try:
            await self.engine.wake(saga_id, continuing=continuing)
        finally:
            self.waking.discard(saga_id)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("saga task failed: %r", task.exception())

    def service(self) -> Service:
        async def start(cmd: SagaStart, env: Envelope) -> SagaStarted:
            return await self.engine.start(cmd, env)

        async def signal_(cmd: SagaSignal, env: Envelope) -> None:
            await self.engine.signal(cmd.saga_id, cmd.name, cmd.payload, env.message_id)

        async def cancel(cmd: SagaCancel, env: Envelope) -> None:
            await self.engine.cancel(cmd.saga_id, cmd.reason, env.message_id)

        async def terminate(cmd: SagaTerminate, env: Envelope) -> None:
            await self.engine.terminate(cmd.saga_id, cmd.reason, env.message_id)

        async def retry(cmd: SagaRetry, env: Envelope) -> SagaRetried:
            return await self.engine.retry(cmd.saga_id, cmd.reason, env.message_id)

        async def on_event(event: Any, env: Envelope) -> None:
            if isinstance(event, SagaFinished):
                await self.engine.child_finished(event, env)
            elif not isinstance(event, SagaStarted):
                if not await self.engine.reply(event, env) and self.turns is not None:
                    await self.turns.saw(event, env)

        async def connected(bus: Connected) -> None:
            self.bus = bus

        async def query(cmd: SagaQuery, env: Envelope) -> SagaQueried:
            await self.engine.stored(cmd.saga_id)
            row = await queries.get_instance(self.engine.db, cmd.saga_id, tenant=env.tenant)
            if row is None:
                return SagaQueried(saga=None)
            if not cmd.include_history:
                return SagaQueried(saga=saga_info(row, []))
            history = await queries.get_history(self.engine.db, cmd.saga_id)
            children = await queries.list_children(self.engine.db, cmd.saga_id, env.tenant)
            info = saga_info(row, history)
            info.data = row.get("data") or {}
            info.children = children
            return SagaQueried(saga=info)

        async def list_(cmd: SagaList, env: Envelope) -> SagaListed:
            limit = max(1, min(cmd.limit, 200))
            try:
                where = list_query.parse(cmd.query) if cmd.query else None
            except list_query.QueryError as exc:
                raise errors.Invalid(f"query {cmd.query!r}: {exc}") from exc
            rows = await queries.list_instances(
                self.engine.db,
                tenant=env.tenant,
                saga_type=cmd.saga_type,
                state=cmd.state,
                until=float(cmd.before) if cmd.before else None,
                where=where,
                limit=limit,
            )
            cursor = repr(rows[-1]["created_at"]) if len(rows) == limit else None
            return SagaListed(sagas=[saga_info(r, []) for r in rows], next_cursor=cursor)

        return Service(
            name="sagas",
            routes={
                SagaStart: start,
                SagaSignal: signal_,
                SagaCancel: cancel,
                SagaTerminate: terminate,
                SagaRetry: retry,
                SagaQuery: query,
                SagaList: list_,
            },
            event_routes={"*": on_event},
            startup=[connected],
        )

    async def timers(self) -> None:
        while True:
            try:
                due = await self.engine.due(self.engine.clock())
                if due:
                    await asyncio.gather(*(self.wake(s) for s in due), return_exceptions=True)
            except Exception as exc:
                log.warning("timer pass failed: %s", exc)
            await asyncio.sleep(TIMER_INTERVAL)

    async def turn_ends(self) -> None:
        """End the direct turns whose gateways stopped before their ends (sagas/turns.py)."""
        looks = 0
        while True:
            try:
                if self.turns is not None and self.bus is not None:
                    await self.turns.overdue(self.bus)
                    looks += 1
                    if looks % FORGET_EVERY == 0:
                        await self.turns.forget()
            except Exception as exc:
                log.warning("ending overdue turns failed: %s", exc)
            await asyncio.sleep(TURNS_INTERVAL)

    async def sweeper(self) -> None:
        while True:
            try:
                if self.relay is not None:
                    await self.relay.mark_sent()
                    await self.relay.sweep()
            except Exception as exc:
                log.warning("outbox sweep failed: %s", exc)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def stop(self) -> None:
        committer = self.committer
        for task in list(self.tasks):
            if task is not committer:
                task.cancel()
        if self.running is not None:
            await self.running.stop()  # messages in hand wait for their group commit
        if committer is not None:
            committer.cancel()
        with contextlib.suppress(Exception):
            await self.engine.store.flush()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await self.relay.mark_sent()
        if self.db is not None:
            self.engine.storage.close()
            await dispose(self.db)


def saga_info(row: dict[str, Any], history: list[dict[str, Any]]) -> SagaInfo:
    """The caller's view of an instance: what it is, where it is, what it waits for."""
    waiting = row.get("waiting") or {}
    waiting_for = []
    if waiting.get("kind") == Waiting.SIGNAL:
        waiting_for.append(f"signal:{waiting['name']}")
    elif waiting.get("kind") in (Waiting.CALL, Waiting.RETRY):
        waiting_for.append(f"reply:{waiting['command']['schema']}")
    elif waiting.get("kind") == Waiting.ALL:
        waiting_for.extend(
            f"reply:{c['command']['schema']}" for c in waiting["calls"] if c["kind"] != Part.DONE
        )
    elif waiting.get("kind") == Waiting.SLEEP:
        waiting_for.append("timer")
    elif waiting.get("kind") == Waiting.CHILD:
        waiting_for.append(f"child:{waiting['child_id']}")
    elif waiting.get("kind") == Waiting.CHILDREN:
        waiting_for.extend(
            f"child:{c['child_id']}" for c in waiting["children"] if c.get("outcome") is None
        )
    return SagaInfo(
        saga_id=row["id"],
        saga_type=row["type"],
        state=row["state"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        input=row.get("input") or {},
        result=row.get("result"),
        error=row.get("error"),
        error_code=row.get("error_code"),
        waiting_for=waiting_for,
        parent_id=row.get("parent_id"),
        history=[
            SagaStep(
                at=h["at"], kind=h["event"], detail=f"{h['step'] or ''} {h['detail'] or ''}".strip()
            )
            for h in history
        ],
    )


async def _count_unfinished(db: AsyncEngine) -> None:
    """The saga gauge, per scrape: instances not finished yet, by type and state."""
    i = tables.instances
    async with reader(db).connect() as conn:
        rows = await conn.execute(
            select(i.c.type, i.c.state, func.count())
            .where(i.c.finished_at.is_(None))
            .group_by(i.c.type, i.c.state)
        )
        metrics.saga_instances((str(t), str(s), int(n)) for t, s, n in rows)


async def start(
    settings: Settings,
    definitions: Iterable[Definition[Any]] | None = None,
    *,
    health_port: int | None = None,
) -> Runner:
    url = settings.resolved_database_url("sagas")
    await migrate(url, "sagas")
    db = make_engine(url)
    registry = (
        Registry(definitions)
        if definitions is not None
        else Registry(default_definitions(), discover=installed_definitions)
    )
    engine = Engine(db, registry, replay_grace=2 * settings.ack_wait)
    runner = Runner(engine=engine, db=db)
    runner.turns = TurnWatch(db, settings.turn_deadline, engine.clock)
    engine.on_commit = runner.on_commit
    nc = await connect(settings.nats_url, "soma-sagas-relay")
    runner.relay = Relay(db, nc.jetstream())
    engine.publish = runner.relay.publish_now
    runner.committer = runner._spawn(engine.store.run())
    service = runner.service()
    service.shutdown.append(nc.close)
    runner.running = await runtime.start(service, settings, health_port=health_port)
    metrics.on_scrape(functools.partial(_count_unfinished, db))
    runner._spawn(runner.timers())
    runner._spawn(runner.sweeper())
    runner._spawn(runner.turn_ends())
    return runner


async def main(settings: Settings) -> None:
    """``soma run sagas``: run until cancelled (SIGINT/SIGTERM, by ``kernel.processes``)."""
    runner = await start(settings, health_port=settings.health_port)
    print("sagas: runner consuming", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.stop()
