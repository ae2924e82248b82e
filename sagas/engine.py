"""The saga engine: every trigger is applied in one transaction.

    record the message id in the inbox (a duplicate stops here)
    load the instance (SELECT … FOR UPDATE on PostgreSQL; the rev check everywhere)
    decide: a transition (sagas/transitions.py) runs the step the instance waits on → a Change
    save state + history + outbox (commands and events to send), bump rev

The engine holds no saga logic of its own: it loads, calls one transition, persists what it
returns through storage (sagas/storage.py, sagas/hot.py) and hands the outbox to the relay.

Publishing happens after commit, by the relay, with ``Nats-Msg-Id`` = outbox id
(saga, run, seq, attempt): a crash between commit and publish re-publishes the same id, which the
server drops if it got through, while a deliberate retry has a new attempt and a new id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bus import errors
from sagas import operations, tables, transitions
from sagas.change import Change, Instance
from sagas.definition import Definition
from sagas.hot import Hot, HotStore, Publish
from sagas.registry import Registry
from sagas.storage import storage_for
from sagas.transitions import Rules, waits_on
from schemas.envelope import GROUP_MARK, Envelope, saga_of_command
from schemas.sagas import (
    ENDED,
    UNSUCCESSFUL,
    IdConflict,
    IdReuse,
    SagaFinished,
    SagaRetried,
    SagaStart,
    SagaStarted,
    SagaState,
)

log = logging.getLogger("soma.sagas")

# How often a reply that came before its command's transition looks for it again.
EARLY_POLL = 0.05


class SagaNotFound(LookupError):
    """A signal or cancel for an id with no instance (perhaps not started yet)."""


class RevMoved(Exception):
    """Another runner advanced the instance first; reload and try again."""


OnCommit = Callable[[list[dict[str, Any]], list[str]], Awaitable[None]]
# Decides one transition of a loaded instance at ``now``; None when there is nothing to do.
Decide = Callable[[Instance, float], Change | None]


class Engine:
    def __init__(
        self,
        db: AsyncEngine,
        registry: Registry,
        *,
        on_commit: OnCommit | None = None,
        replay_grace: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        self.db = db
        # Every time a transition reads (timers, deadlines, history) comes from here, so tests
        # can move time instead of sleeping through retries and timeouts.
        self.clock = clock
        self.storage = storage_for(db)
        self.registry = registry
        self.on_commit = on_commit
        # Group mode: how long a lost transition's event may take to come back (twice the ack wait).
        self.replay_grace = replay_grace
        self.store = HotStore(self.storage, _numbered)
        self._rules_of_definition: dict[Definition[Any], Rules] = {}
        # Group mode publishes commands itself, before the commit (the runner sets it).
        self.publish: Publish | None = None
        # A group mode instance's timers wait until events left unacknowledged by a runner that
        # died have come back (RECOVERY.md): they would otherwise race the replay.
        self.timers_from = clock() + replay_grace / 2

    # ── entry points ────────────────────────────────────────────────────────────────────

    async def start(self, cmd: SagaStart, env: Envelope) -> SagaStarted:
        definition = self.registry.latest(cmd.saga_type)
        try:
            definition.decode_input(cmd.input)
        except (msgspec.ValidationError, TypeError) as exc:
            raise errors.Invalid(f"input for {cmd.saga_type}: {exc}") from exc
        saga_id = cmd.saga_id or env.message_id
        if definition.durability == "group" and self.publish is not None:
            started = await self._start_hot(saga_id, definition, cmd, env)
            if started is not None:
                return started
        outcome: SagaStarted | None = None

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            nonlocal outcome
            if not await self.storage.record_inbox(conn, saga_id, env.message_id, now):
                row = await self._load(conn, saga_id)
                if row is not None:
                    outcome = SagaStarted(saga_id=saga_id, saga_type=row.type, version=row.version)
                return None
            existing = await self._load(conn, saga_id)
            run_no = 1
            if existing is not None:
                if existing.state not in ENDED:
                    if cmd.id_conflict == IdConflict.USE_EXISTING:
                        outcome = SagaStarted(
                            saga_id=saga_id, saga_type=existing.type, version=existing.version
                        )
                        return None
                    raise errors.Conflict(f"saga {saga_id} is already running (id_conflict=fail)")
                allowed = cmd.id_reuse == IdReuse.ALLOW_DUPLICATE or (
                    cmd.id_reuse == IdReuse.ALLOW_DUPLICATE_FAILED_ONLY
                    and existing.state in UNSUCCESSFUL
                )
                if not allowed:
                    raise errors.Conflict(
                        f"saga {saga_id} already exists ({existing.state}; id_reuse={cmd.id_reuse})"
                    )
                run_no = existing.run + 1
            row = transitions.new_instance(definition, saga_id, cmd.input, env, now, run_no=run_no)
            change = transitions.on_start(self._rules(definition), row, env.message_id, now)
            if existing is None:
                await conn.execute(tables.instances.insert().values(**change.row.to_row()))
            else:
                values = {**change.row.to_row(), "rev": existing.rev + 1}
                await conn.execute(
                    update(tables.instances)
                    .where(tables.instances.c.id == saga_id)
                    .values(**values)
                )
            outcome = SagaStarted(
                saga_id=saga_id, saga_type=definition.saga_type, version=definition.version
            )
            return change

        await self._transact(body, saga_id=None)
        assert outcome is not None
        return outcome

    async def reply(self, event: Any, env: Envelope) -> bool:
        """Route a reply event to the saga whose command caused it; False if it isn't ours."""
        saga_id = saga_of_command(env.causation_id)
        if saga_id is None:
            return False
        if is_group_command(env.causation_id):
            await self._reply_hot(saga_id, event, env)
            return True

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._load(conn, saga_id)
            index = waits_on(row.waiting, env.causation_id) if row is not None else None
            if row is None or index is None:
                return None  # not ours, or a late reply to an attempt we gave up on
            if not await self.storage.record_inbox(conn, saga_id, env.message_id, now):
                return None
            return transitions.on_reply(self._rules_of(row), row, index, event, env, now)

        await self._transact(body, saga_id=saga_id)
        return True

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], message_id: str
    ) -> None:
        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._first_delivery(conn, saga_id, message_id, now)
            if row is None:
                return None
            if row.state in ENDED:
                raise errors.Conflict(
                    f"saga {saga_id} has ended ({row.state}); signal {name} dropped"
                )
            rules = self._rules_of(row)
            return transitions.on_signal(rules, row, name, payload, message_id, now)

        await self._transact(body, saga_id=saga_id)

    async def _first_delivery(
        self, conn: AsyncConnection, saga_id: str, message_id: str, now: float
    ) -> Instance | None:
        """The instance ``message_id`` is about, held for ``conn``'s transaction; None when
        that message reached it before. A missing instance raises ``SagaNotFound``: its start
        may be in flight on another delivery, so the message is retried, then dead-lettered."""
        if not await self.storage.record_inbox(conn, saga_id, message_id, now):
            return None
        row = await self._load(conn, saga_id)
        if row is None:
            raise SagaNotFound(f"no saga {saga_id} (yet)")
        return row

    async def stored(self, saga_id: str) -> None:
        """Return once what this runner holds of ``saga_id`` is committed.

        A group mode instance publishes its events before the commit that stores them, so a
        read that follows an event (a retried request asking whether its turn ended) first
        lets that commit happen; otherwise it could see a state older than the event."""
        if saga_id in self.store.hot:  # pending, or in a commit under way: wait for it
            await self.store.flush()

    async def cancel(self, saga_id: str, reason: str, message_id: str) -> None:
        await self.store.settle(saga_id)

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._first_delivery(conn, saga_id, message_id, now)
            if row is None:
                return None
            if row.state in ENDED or row.state == SagaState.CANCELLING:
                return None
            return transitions.on_cancel(self._rules_of(row), row, reason, message_id, now)

        await self._transact(body, saga_id=saga_id)

    async def terminate(self, saga_id: str, reason: str, message_id: str) -> None:
        """End a running or cancelling saga at once: no compensation runs, what it waits for is
        dropped, and its running children are sent a terminate of their own (Temporal's
        parent close policy TERMINATE). An ended saga is a ``Conflict``."""
        await self.store.settle(saga_id)

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._first_delivery(conn, saga_id, message_id, now)
            if row is None:
                return None
            refused = operations.why_not_terminable(saga_id, row.state)
            if refused:
                raise errors.Conflict(refused)
            i = tables.instances
            children = await conn.execute(
                select(i.c.id)
                .where(i.c.parent_id == saga_id, i.c.state.not_in(list(ENDED)))
                .order_by(i.c.created_at, i.c.id)
            )
            running = [child_id for (child_id,) in children]
            rules = self._rules_of(row)
            return transitions.on_terminate(rules, row, reason, running, message_id, now)

        await self._transact(body, saga_id=saga_id)

    async def retry(self, saga_id: str, reason: str, message_id: str) -> SagaRetried:
        """Run a failed saga again from where it failed, as its next run: the failed call is
        sent again as a first attempt, the failed step runs again on the data it was given.
        Any state but ``failed`` is a ``Conflict`` that says why."""
        await self.store.settle(saga_id)
        outcome: SagaRetried | None = None

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            nonlocal outcome
            seen = not await self.storage.record_inbox(conn, saga_id, message_id, now)
            row = await self._load(conn, saga_id)
            if row is None:
                raise SagaNotFound(f"no saga {saga_id} (yet)")
            if seen:  # a redelivery: answer as the first delivery did
                outcome = SagaRetried(
                    saga_id=saga_id, saga_type=row.type, run=row.run, step=row.step
                )
                return None
            rules = self._rules_of(row)
            refused = operations.why_not_retryable(row, rules.definition.durability)
            if refused:
                raise errors.Conflict(refused)
            step = row.data[operations.RESUME]["step"]
            change = transitions.on_retry(rules, row, reason, message_id, now)
            outcome = SagaRetried(
                saga_id=saga_id, saga_type=row.type, run=change.row.run, step=step
            )
            return change

        await self._transact(body, saga_id=saga_id)
        assert outcome is not None
        return outcome

    async def child_finished(self, event: SagaFinished, env: Envelope) -> None:
        parent_id = event.parent_id
        if not parent_id:
            return
        await self.store.settle(parent_id)

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            if not await self.storage.record_inbox(conn, parent_id, env.message_id, now):
                return None
            row = await self._load(conn, parent_id)
            if row is None:
                return None
            rules = self._rules_of(row)
            return transitions.on_child_finished(rules, row, event, env.message_id, now)

        await self._transact(body, saga_id=parent_id)

    async def due(self, now: float, limit: int = 500) -> list[str]:
        return await self.storage.due(now, limit)

    async def wake(self, saga_id: str, *, continuing: bool = False) -> None:
        """Fire whatever timer of ``saga_id`` is due: a sleep, a timeout, a retry, a continue.

        ``continuing``: the process that committed a ``Continue`` goes straight on with it; the
        timer pass only picks such a step up after a grace period, if that process died.
        """

        def fire(row: Instance, now: float) -> Change | None:
            return transitions.on_timer(self._rules_of(row), row, now, continuing=continuing)

        hot = self.store.hot.get(saga_id)
        if hot is None:
            row = await self._read(saga_id)
            if row is None:
                return
            if self._definition(row).durability == "group" and self.publish is not None:
                hot = self.store.keep(saga_id, Hot(row, row.rev))
        if hot is not None:
            if self.clock() < self.timers_from:
                return
            await self._transition(saga_id, hot, fire)
            return

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._load(conn, saga_id)
            return fire(row, now) if row is not None else None

        await self._transact(body, saga_id=saga_id)

    # ── group mode: hot instances ─────────────────────────────────────────────────────

    async def _read(self, saga_id: str) -> Instance | None:
        """The stored instance, without a lock (group mode decides in memory)."""
        row = await self.storage.read(saga_id)
        return Instance.of(row) if row is not None else None

    async def _start_hot(
        self, saga_id: str, definition: Definition[Any], cmd: SagaStart, env: Envelope
    ) -> SagaStarted | None:
        """Start a new instance in memory; None when one of that id exists (the step mode
        start then decides: a duplicate delivery, a conflict, a new run)."""
        started = SagaStarted(
            saga_id=saga_id, saga_type=definition.saga_type, version=definition.version
        )
        held = self.store.hot.get(saga_id)
        if held is None:
            stored = await self._read(saga_id)
            held = self.store.hot.get(saga_id)
            if held is None and stored is None:
                now = self.clock()
                row = transitions.new_instance(definition, saga_id, cmd.input, env, now)
                change = transitions.on_start(self._rules(definition), row, env.message_id, now)
                ours = Hot(change.row, None, start_id=env.message_id)
                hot = self.store.keep(saga_id, ours)
                if hot is not ours:  # another delivery of a start of this id got there first
                    return started if hot.start_id == env.message_id else None
                inbox = [{"saga_id": saga_id, "message_id": env.message_id, "at": now}]
                await self._commit_hot(saga_id, hot, change, inbox)
                return started
        if held is not None and held.start_id == env.message_id:
            return started  # the same start delivered again while it runs
        await self.store.settle(saga_id)
        return None

    async def _reply_hot(self, saga_id: str, event: Any, env: Envelope) -> None:
        """A reply to a group mode command. One to a command this instance has not sent yet
        (as far as the stored state knows) is early: the transition that sent it was lost with
        a runner that died, and comes back when that runner's unacknowledged event is
        redelivered; it is held until then, not dropped."""
        assert env.causation_id is not None
        deadline = time.monotonic() + self.replay_grace
        while True:
            hot = self.store.hot.get(saga_id)
            if hot is None:
                row = await self._read(saga_id)
                hot = self.store.hot.get(saga_id) or (
                    self.store.keep(saga_id, Hot(row, row.rev)) if row is not None else None
                )
            if hot is not None:
                if waits_on(hot.row.waiting, env.causation_id) is not None:
                    await self._transition(saga_id, hot, self._answer(event, env))
                    return
                if not _ahead(env.causation_id, hot.row):
                    return  # late: an attempt given up on, or a reply already taken
                self.store.forget(saga_id)  # perhaps another runner moved it on: reload
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"saga {saga_id}: a reply to {env.causation_id}, which it has not sent yet"
                )
            await asyncio.sleep(EARLY_POLL)

    def _answer(self, event: Any, env: Envelope) -> Decide:
        def decide(row: Instance, now: float) -> Change | None:
            index = waits_on(row.waiting, env.causation_id)
            if index is None:
                return None  # another delivery of it got there first
            return transitions.on_reply(self._rules_of(row), row, index, event, env, now)

        return decide

    async def _transition(self, saga_id: str, hot: Hot, decide: Decide) -> None:
        """Apply one transition to a hot instance: decide in memory, publish what it sends,
        and return once its state is committed."""
        now = self.clock()
        row = msgspec.structs.replace(hot.row, seq=hot.row.seq + 1)
        change = decide(row, now)
        if change is None:
            return
        hot.row = msgspec.structs.replace(change.row, updated_at=now, rev=hot.row.rev + 1)
        await self._commit_hot(saga_id, hot, change, [])

    async def _commit_hot(
        self, saga_id: str, hot: Hot, change: Change, inbox: list[dict[str, Any]]
    ) -> None:
        assert self.publish is not None
        if change.children:
            raise RuntimeError("a group mode saga cannot start child sagas")
        publishing = None
        if change.outbox:
            rows = [o.to_row() for o in change.outbox]
            publishing = (asyncio.ensure_future(self.publish(rows)), rows)
        history = [h.to_row() for h in change.history]
        await self.store.add(saga_id, hot, change.written, history, inbox, publishing)

    # ── persistence ────────────────────────────────────────────────────────────────────

    def _definition(self, row: Instance) -> Definition[Any]:
        return self.registry.get(row.type, row.version)

    def _rules(self, definition: Definition[Any]) -> Rules:
        rules = self._rules_of_definition.get(definition)
        if rules is None or rules.replay_grace != self.replay_grace:
            rules = Rules(definition, self.registry.latest, self.replay_grace)
            self._rules_of_definition[definition] = rules
        return rules

    def _rules_of(self, row: Instance) -> Rules:
        return self._rules(self._definition(row))

    async def _load(self, conn: AsyncConnection, saga_id: str) -> Instance | None:
        loaded = await self.storage.load(conn, saga_id)
        if loaded is None:
            return None
        loaded["seq"] += 1  # every transition is numbered; history is unique per number
        return Instance.of(loaded)

    async def _transact(
        self,
        body: Callable[[AsyncConnection, float], Awaitable[Change | None]],
        *,
        saga_id: str | None,
    ) -> None:
        """Run ``body`` (load, decide) in one transaction and write the change it returns;
        ``saga_id`` None: ``body`` wrote the instance itself (a start)."""
        for attempt in range(20):
            try:
                async with self.db.begin() as conn:
                    now = self.clock()
                    change = await body(conn, now)
                    if change is None:
                        return
                    if saga_id is not None:
                        await self._save(conn, saga_id, change, now)
                    for child in change.children:
                        await conn.execute(tables.instances.insert().values(**child.to_row()))
                    if change.history:
                        history = [h.to_row() for h in change.history]
                        await conn.execute(tables.history.insert(), _numbered(history))
                    outbox = [o.to_row() for o in change.outbox]
                    if outbox:
                        await conn.execute(tables.outbox.insert(), outbox)
            except RevMoved:
                log.debug("saga %s advanced elsewhere; retrying (%d)", saga_id, attempt)
                continue
            if self.on_commit is not None and (outbox or change.wake_now):
                await self.on_commit(outbox, change.wake_now)
            return
        raise RuntimeError(f"saga {saga_id}: gave up after repeated concurrent updates")

    async def _save(self, conn: AsyncConnection, saga_id: str, change: Change, now: float) -> None:
        rev = change.row.rev  # a transition never sets it: the rev loaded
        values = {**change.values(), "updated_at": now, "rev": rev + 1}
        if not await self.storage.save(conn, saga_id, rev, values):
            raise RevMoved(saga_id)


def is_group_command(message_id: str | None) -> bool:
    if not message_id or not message_id.endswith(GROUP_MARK):
        return False
    return saga_of_command(message_id) is not None


def _ahead(message_id: str, row: Instance) -> bool:
    """True when ``message_id`` names a command of a transition after ``row``'s last one."""
    parts = message_id.removesuffix(GROUP_MARK).rsplit(".", 4)
    return (int(parts[1]), int(parts[2])) > (row.run, row.seq)


def _numbered(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each history row of one transition a distinct (seq, event) key."""
    seen: dict[tuple[Any, ...], int] = {}
    out = []
    for h in history:
        key = (h["saga_id"], h["run"], h["seq"], h["event"])
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(h if n == 0 else {**h, "event": f"{h['event']}#{n}"})
    return out
