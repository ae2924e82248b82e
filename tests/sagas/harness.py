"""The saga engine below the bus: a real engine on a fresh SQLite file, a clock the test moves,
and a publisher that records what the engine sends instead of putting it on NATS.

A test starts a saga, reads the commands it sent, answers each one with a reply or a
``CommandFailed``, and moves the clock to run the timer pass, as the runner would
(sagas/runner.py): retries, timeouts, sleeps and signal timeouts fire the moment the clock
reaches them, with no nats-server and no waiting for the time they stand for.

    h = await Harness.open(tmp_path, ALL)
    saga_id = await h.start("three_steps")
    await h.answer(h.command(ToolInvoke), ToolResult(...))
    await h.at(h.clock() + 30)          # the timer pass at that moment
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from bus.consume import reply_id
from bus.publish import envelope_for
from kernel.db import make_engine, migrate
from sagas import queries
from sagas.definition import Definition
from sagas.engine import Engine
from sagas.registry import Registry
from schemas.catalogue import by_name, failed_event, of_type
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import Envelope, new_id
from schemas.sagas import SagaFinished, SagaRetried, SagaStart
from tests.clock import Clock

TENANT = "acme"
# Any fixed moment will do; a round one keeps the figures in a failing assertion readable.
EPOCH = 1_800_000_000.0
# Real seconds a trigger may take before the harness calls it stuck (it takes milliseconds).
SETTLE = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class Sent:
    """One message the engine sent: its envelope and its decoded body."""

    envelope: Envelope
    message: Any
    kind: str  # "cmd" or "evt", as the catalogue files its schema

    @property
    def id(self) -> str:
        return self.envelope.message_id

    @property
    def attempt(self) -> int:
        """The attempt a command's id names (``<saga>.<run>.<seq>.<n>.<attempt>[.g]``)."""
        return int(self.id.removesuffix(".g").rsplit(".", 1)[1])


@dataclass
class Publisher:
    """Stands where the runner's relay stands. Step mode hands it each transaction's outbox
    after the commit (``on_commit``), group mode publishes through it before its commit
    (``publish``); both are recorded in order in ``sent``."""

    sent: list[Sent] = field(default_factory=list)
    # Instances a step mode transaction asked to go on with at once (a Continue, a child).
    wake_now: list[str] = field(default_factory=list)

    async def on_commit(self, rows: list[dict[str, Any]], wake_now: list[str]) -> None:
        await self.publish(rows)
        self.wake_now.extend(wake_now)

    async def publish(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            env = Envelope.from_headers(row["headers"])
            entry = by_name(env.schema)
            self.sent.append(Sent(env, entry.decode(bytes(row["body"])), entry.kind))


class Harness:
    """An engine, its database, its clock and its publisher, with the runner's moves as
    methods. Every method returns once what it triggered is committed."""

    def __init__(self, db: AsyncEngine, engine: Engine, clock: Clock, publisher: Publisher):
        self.db = db
        self.engine = engine
        self.clock = clock
        self.publisher = publisher
        self.routed = 0  # how many of ``sent`` the runner's event routing has seen

    @classmethod
    async def open(
        cls,
        directory: Path,
        definitions: Iterable[Definition[Any]],
        *,
        replay_grace: float = 60.0,
    ) -> Harness:
        url = f"sqlite+aiosqlite:///{directory / 'sagas.db'}"
        await migrate(url, "sagas")
        db = make_engine(url)
        return cls.on(db, definitions, clock=Clock(EPOCH), replay_grace=replay_grace)

    @classmethod
    def on(
        cls,
        db: AsyncEngine,
        definitions: Iterable[Definition[Any]],
        *,
        clock: Clock,
        replay_grace: float = 60.0,
    ) -> Harness:
        """Another engine on the same database: a runner started after one that died."""
        publisher = Publisher()
        engine = Engine(
            db,
            Registry(definitions),
            on_commit=publisher.on_commit,
            replay_grace=replay_grace,
            clock=clock,
        )
        engine.publish = publisher.publish
        return cls(db, engine, clock, publisher)

    async def close(self) -> None:
        await self.db.dispose()

    # ── what the engine sent ──────────────────────────────────────────────────────────

    @property
    def sent(self) -> list[Sent]:
        return self.publisher.sent

    def commands(self, schema: type[T] | None = None) -> list[Sent]:
        """The commands sent so far, oldest first; only those of ``schema`` when given."""
        return [
            s
            for s in self.sent
            if s.kind == "cmd" and (schema is None or isinstance(s.message, schema))
        ]

    def command(self, schema: type[T] | None = None) -> Sent:
        """The latest command sent (of ``schema``)."""
        sent = self.commands(schema)
        assert sent, f"no command{f' {schema.__name__}' if schema else ''} sent: {self.sent}"
        return sent[-1]

    def events(self, schema: type[T]) -> list[T]:
        return [s.message for s in self.sent if s.kind == "evt" and isinstance(s.message, schema)]

    # ── the runner's moves ────────────────────────────────────────────────────────────

    async def start(
        self, saga_type: str, input: dict[str, Any] | None = None, *, saga_id: str | None = None
    ) -> str:
        saga_id = saga_id or new_id()
        cmd = SagaStart(saga_type=saga_type, saga_id=saga_id, input=input or {})
        env = envelope_for(cmd, tenant=TENANT, correlation_id=saga_id)
        await self.settled(self.engine.start(cmd, env))
        return saga_id

    def reply_to(self, command: Sent, event: msgspec.Struct) -> Envelope:
        """The envelope of ``event`` answering ``command``, as the handler runtime makes it
        (bus/consume.py): a ``CommandFailed`` is filed under ``<service>.failed``."""
        if isinstance(event, CommandFailed):
            entry = failed_event(by_name(command.envelope.schema).service)
            return command.envelope.reply(entry.name, reply_id(command.id, "failed"))
        entry = of_type(type(event))
        return command.envelope.reply(entry.name, reply_id(command.id), entry.version)

    async def answer(self, command: Sent, event: msgspec.Struct) -> Envelope:
        """Deliver ``event`` as the reply to ``command``; return its envelope, so that a test
        may deliver it again."""
        env = self.reply_to(command, event)
        await self.deliver(event, env)
        return env

    async def fail(
        self,
        command: Sent,
        code: FailureCode,
        *,
        retryable: bool = False,
        error: str = "it did not work",
    ) -> Envelope:
        """Answer ``command`` with a ``CommandFailed`` of ``code``."""
        failure = CommandFailed(
            command=command.envelope.schema, error=error, retryable=retryable, code=code
        )
        return await self.answer(command, failure)

    async def deliver(self, event: Any, env: Envelope) -> None:
        """One delivery of a reply event (a redelivery is the same event and envelope)."""
        await self.settled(self.engine.reply(event, env))

    async def signal(self, saga_id: str, name: str, payload: dict[str, Any] | None = None) -> None:
        await self.settled(self.engine.signal(saga_id, name, payload or {}, new_id()))

    async def cancel(self, saga_id: str, reason: str = "test") -> None:
        await self.settled(self.engine.cancel(saga_id, reason, new_id()))

    async def terminate(self, saga_id: str, reason: str = "test", message_id: str = "") -> None:
        await self.settled(self.engine.terminate(saga_id, reason, message_id or new_id()))

    async def retry(self, saga_id: str, reason: str = "test") -> SagaRetried:
        return await self.settled(self.engine.retry(saga_id, reason, new_id()))

    async def at(self, moment: float) -> None:
        """Set the clock to ``moment`` and run one timer pass: wake every instance due."""
        assert moment >= self.clock.now, "time runs forwards"
        self.clock.now = moment
        for saga_id in await self.engine.due(self.clock()):
            await self.settled(self.engine.wake(saga_id))

    async def advance(self, seconds: float) -> None:
        await self.at(self.clock.now + seconds)

    # ── what is stored ────────────────────────────────────────────────────────────────

    async def instance(self, saga_id: str) -> dict[str, Any]:
        row = await queries.get_instance(self.db, saga_id)
        assert row is not None, f"no saga {saga_id}"
        return row

    async def history(self, saga_id: str) -> list[dict[str, Any]]:
        return await queries.get_history(self.db, saga_id)

    # ── plumbing ──────────────────────────────────────────────────────────────────────

    async def settled(self, trigger: Awaitable[T]) -> T:
        """Run ``trigger`` to its end, then what it set going, as the runner would: a step mode
        ``Continue`` or child start goes on at once, a child's ``sagas.finished`` reaches its
        parent. Nothing here waits on real time, so a trigger still running after ``SETTLE``
        seconds is a fault, reported rather than waited for."""
        async with asyncio.timeout(SETTLE):
            result = await self._committed(trigger)
            while True:
                if self.publisher.wake_now:
                    saga_id = self.publisher.wake_now.pop(0)
                    await self._committed(self.engine.wake(saga_id, continuing=True))
                elif self.routed < len(self.sent):
                    sent = self.sent[self.routed]
                    self.routed += 1
                    if isinstance(sent.message, SagaFinished) and sent.message.parent_id:
                        await self._committed(
                            self.engine.child_finished(sent.message, sent.envelope)
                        )
                else:
                    return result

    async def _committed(self, trigger: Awaitable[T]) -> T:
        """A group mode transition returns once its group commit is written: written here,
        as the runner's committer would, rather than after its 30 ms window."""
        task = asyncio.ensure_future(trigger)
        try:
            while not task.done():
                await asyncio.sleep(0.001)
                await self.engine.store.flush()
        finally:
            task.cancel()
        return task.result()
