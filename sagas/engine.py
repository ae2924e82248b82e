"""The saga engine: every trigger is applied in one transaction.

    record the message id in the inbox (a duplicate stops here)
    load the instance (SELECT … FOR UPDATE on PostgreSQL; the rev check everywhere)
    run the step the instance waits on → an Action
    save state + history + outbox (commands and events to send), bump rev

Publishing happens after commit, by the relay, with ``Nats-Msg-Id`` = outbox id
(saga, run, seq, attempt): a crash between commit and publish re-publishes the same id, which the
server drops if it got through, while a deliberate retry has a new attempt and a new id.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bus import errors, tracing
from bus.publish import encode
from sagas import operations, tables
from sagas.definition import (
    Action,
    Call,
    CallAll,
    Complete,
    Continue,
    Definition,
    Fail,
    Reply,
    Retry,
    Run,
    Sleep,
    StartChild,
    StartChildren,
    WaitSignal,
    step_name,
)
from sagas.hot import Hot, HotStore, Publish
from sagas.registry import Registry
from sagas.storage import storage_for
from schemas.catalogue import by_name, of_type
from schemas.common import CommandFailed, FailureCode
from schemas.envelope import Envelope
from schemas.sagas import (
    ENDED,
    UNSUCCESSFUL,
    IdConflict,
    IdReuse,
    Part,
    SagaCancel,
    SagaFinished,
    SagaReplied,
    SagaRetried,
    SagaStart,
    SagaStarted,
    SagaState,
    SagaTerminate,
    Waiting,
)

log = logging.getLogger("soma.sagas")

_COMPENSATED = "__compensated__"
# A child that ended so left its effects in place: its ``compensate`` is then the parent's to run.
_LEFT_EFFECTS = frozenset({SagaState.COMPLETED, SagaState.FAILED, SagaState.TERMINATED})
# A Continue is carried on by the process that committed it at once; the timer pass takes it
# over only when it is still pending this long after (its process died).
CONTINUE_GRACE = 1.0
_COMPENSATION_RETRY = Retry(initial=1.0, max_attempts=5)
# Steps a group mode transition runs one after another before it checkpoints (a loop of
# Continues still yields to the timer pass now and then).
MAX_INLINE = 32
# Group mode commands' ids end so: their replies are routed to the hot path.
GROUP_MARK = ".g"
# How often a reply that came before its command's transition looks for it again.
EARLY_POLL = 0.05


class SagaNotFound(LookupError):
    """A signal or cancel for an id with no instance (perhaps not started yet)."""


class RevMoved(Exception):
    """Another runner advanced the instance first; reload and try again."""


@dataclass
class Change:
    """What one transition writes: the new row values, history, and messages to send."""

    values: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    wake_now: list[str] = field(default_factory=list)
    rev: int | None = None  # the rev loaded at the start of the transaction
    inline: int = 0  # steps run inline by this transition (group mode)
    # The last step this transition ran: its name, the data and the reply it was given (where
    # a retry starts again if that step fails the saga; sagas/operations.py).
    before: tuple[str, dict[str, Any], Any] | None = None


OnCommit = Callable[[list[dict[str, Any]], list[str]], Awaitable[None]]


@functools.cache
def _arity(fn: Callable[..., Any]) -> int:
    return len(inspect.signature(fn).parameters)


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
        self.reads = self.storage.reads
        self.registry = registry
        self.on_commit = on_commit
        # Group mode: how long a lost transition's event may take to come back (twice the ack wait).
        self.replay_grace = replay_grace
        self.store = HotStore(self.storage, _numbered)
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
            if not await self._record_inbox(conn, saga_id, env.message_id, now):
                row = await self._load(conn, saga_id)
                if row is not None:
                    outcome = SagaStarted(
                        saga_id=saga_id, saga_type=row["type"], version=row["version"]
                    )
                return None
            existing = await self._load(conn, saga_id)
            run_no = 1
            if existing is not None:
                if existing["state"] not in ENDED:
                    if cmd.id_conflict == IdConflict.USE_EXISTING:
                        outcome = SagaStarted(
                            saga_id=saga_id, saga_type=existing["type"], version=existing["version"]
                        )
                        return None
                    raise errors.Conflict(f"saga {saga_id} is already running (id_conflict=fail)")
                allowed = cmd.id_reuse == IdReuse.ALLOW_DUPLICATE or (
                    cmd.id_reuse == IdReuse.ALLOW_DUPLICATE_FAILED_ONLY
                    and existing["state"] in UNSUCCESSFUL
                )
                if not allowed:
                    raise errors.Conflict(
                        f"saga {saga_id} already exists ({existing['state']}; "
                        f"id_reuse={cmd.id_reuse})"
                    )
                run_no = existing["run"] + 1
            row = self._new_row(
                saga_id, definition, cmd.input, env, now, run_no=run_no, parent_id=None
            )
            change = Change()
            change.history.append(self._history(row, None, "started", {"input": cmd.input}, now))
            self._run_step(
                row, definition, definition.first or "", None, env.message_id, now, change
            )
            if existing is None:
                await conn.execute(tables.instances.insert().values(**{**row, **change.values}))
            else:
                values = {**row, **change.values}
                values["rev"] = existing["rev"] + 1
                await conn.execute(
                    update(tables.instances)
                    .where(tables.instances.c.id == saga_id)
                    .values(**values)
                )
            change.values = {}
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
            index = _waits_on((row or {}).get("waiting"), env.causation_id)
            if row is None or index is None:
                return None  # not ours, or a late reply to an attempt we gave up on
            if not await self._record_inbox(conn, saga_id, env.message_id, now):
                return None
            if row["waiting"]["kind"] == Waiting.ALL:
                return _at(row, self._on_reply_all(row, index, event, env, now))
            return _at(row, self._on_reply(row, event, env, now))

        await self._transact(body, saga_id=saga_id)
        return True

    async def signal(
        self, saga_id: str, name: str, payload: dict[str, Any], message_id: str
    ) -> None:
        async def body(conn: AsyncConnection, now: float) -> Change | None:
            if not await self._record_inbox(conn, saga_id, message_id, now):
                return None
            row = await self._load(conn, saga_id)
            if row is None:
                # Its start may be in flight on another delivery: retried, then dead-lettered.
                raise SagaNotFound(f"no saga {saga_id} (yet)")
            if row["state"] in ENDED:
                raise errors.Conflict(
                    f"saga {saga_id} has ended ({row['state']}); signal {name} dropped"
                )
            change = Change()
            waiting = row["waiting"] or {}
            change.history.append(
                self._history(row, row["step"], "signal", {"name": name, "payload": payload}, now)
            )
            if waiting.get("kind") == Waiting.SIGNAL and waiting.get("name") == name:
                self._run_step(
                    row, self._definition(row), waiting["then"], payload, message_id, now, change
                )
            else:
                data = dict(row["data"])
                data["_signals"] = [*data.get("_signals", []), {"name": name, "payload": payload}]
                change.values["data"] = data
            return _at(row, change)

        await self._transact(body, saga_id=saga_id)

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
            if not await self._record_inbox(conn, saga_id, message_id, now):
                return None
            row = await self._load(conn, saga_id)
            if row is None:
                raise SagaNotFound(f"no saga {saga_id} (yet)")
            if row["state"] in ENDED or row["state"] == SagaState.CANCELLING:
                return None
            change = Change()
            change.history.append(
                self._history(row, row["step"], "cancel_requested", {"reason": reason}, now)
            )
            waiting = row["waiting"] or {}
            if waiting.get("kind") == Waiting.CHILD:
                self._send(
                    row,
                    SagaCancel(saga_id=waiting["child_id"], reason=reason),
                    message_id,
                    now,
                    change,
                    attempt=1,
                )
            elif waiting.get("kind") == Waiting.CHILDREN:
                running = [c for c in waiting["children"] if c.get("outcome") is None]
                for child in running:
                    self._send(
                        row,
                        SagaCancel(saga_id=child["child_id"], reason=reason),
                        message_id,
                        now,
                        change,
                        attempt=1,
                    )
                # A child may complete before its cancel reaches it: its undo is then the
                # parent's to run (a no-op for a child that compensated itself).
                undo = [c["compensate"] for c in running if c.get("compensate")]
                if undo:
                    data = dict(row["data"])
                    data["_compensations"] = [*data.get("_compensations", []), *undo]
                    row = {**row, "data": data}
                    change.values["data"] = data
            elif waiting.get("kind") in (Waiting.CALL, Waiting.RETRY) and waiting.get("compensate"):
                # The call in flight may still take effect (its command is out): its undo runs
                # first, as an undo of what never happened must be harmless anyway.
                data = dict(row["data"])
                data["_compensations"] = [*data.get("_compensations", []), waiting["compensate"]]
                row = {**row, "data": data}
                change.values["data"] = data
            change.values["state"] = SagaState.CANCELLING
            change.values["error"] = f"cancelled: {reason}" if reason else "cancelled"
            self._next_compensation(row, message_id, now, change)
            return _at(row, change)

        await self._transact(body, saga_id=saga_id)

    async def terminate(self, saga_id: str, reason: str, message_id: str) -> None:
        """End a running or cancelling saga at once: no compensation runs, what it waits for is
        dropped, and its running children are sent a terminate of their own (Temporal's
        parent close policy TERMINATE). An ended saga is a ``Conflict``."""
        await self.store.settle(saga_id)

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            if not await self._record_inbox(conn, saga_id, message_id, now):
                return None
            row = await self._load(conn, saga_id)
            if row is None:
                raise SagaNotFound(f"no saga {saga_id} (yet)")
            refused = operations.why_not_terminable(saga_id, row["state"])
            if refused:
                raise errors.Conflict(refused)
            change = Change()
            change.history.append(
                self._history(row, row["step"], "terminate_requested", {"reason": reason}, now)
            )
            i = tables.instances
            children = await conn.execute(
                select(i.c.id)
                .where(i.c.parent_id == saga_id, i.c.state.not_in(list(ENDED)))
                .order_by(i.c.created_at, i.c.id)
            )
            for (child_id,) in children:
                self._command(
                    row,
                    SagaTerminate(saga_id=child_id, reason=reason),
                    message_id,
                    now,
                    change,
                    attempt=1,
                )
            error = operations.terminated_error(reason)
            self._finish(row, SagaState.TERMINATED, None, error, message_id, now, change)
            return _at(row, change)

        await self._transact(body, saga_id=saga_id)

    async def retry(self, saga_id: str, reason: str, message_id: str) -> SagaRetried:
        """Run a failed saga again from where it failed, as its next run: the failed call is
        sent again as a first attempt, the failed step runs again on the data it was given.
        Any state but ``failed`` is a ``Conflict`` that says why."""
        await self.store.settle(saga_id)
        outcome: SagaRetried | None = None

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            nonlocal outcome
            seen = not await self._record_inbox(conn, saga_id, message_id, now)
            row = await self._load(conn, saga_id)
            if row is None:
                raise SagaNotFound(f"no saga {saga_id} (yet)")
            if seen:  # a redelivery: answer as the first delivery did
                outcome = SagaRetried(
                    saga_id=saga_id, saga_type=row["type"], run=row["run"], step=row["step"]
                )
                return None
            definition = self._definition(row)
            refused = operations.why_not_retryable(row, definition.durability)
            if refused:
                raise errors.Conflict(refused)
            point = row["data"][operations.RESUME]
            data = {k: v for k, v in row["data"].items() if k != operations.RESUME}
            row = {**row, "run": row["run"] + 1, "data": data}
            change = Change()
            change.values.update(
                run=row["run"],
                state=SagaState.RUNNING,
                result=None,
                error=None,
                error_code=None,
                finished_at=None,
                data=data,
            )
            change.history.append(
                self._history(
                    row,
                    point["step"],
                    "retried",
                    {"reason": reason, "from_run": row["run"] - 1},
                    now,
                )
            )
            if "waiting" in point:
                waiting, wake_at = operations.resumed_waiting(point, now)
                change.values.update(step=point["step"], waiting=waiting, wake_at=wake_at)
                if wake_at == now:
                    change.wake_now.append(saga_id)
            else:
                data = {k: v for k, v in point["data"].items() if k != operations.RESUME}
                change.values["data"] = data
                reply = operations.decode_reply(point["reply"])
                self._run_step(
                    {**row, "data": data},
                    definition,
                    point["step"],
                    reply,
                    message_id,
                    now,
                    change,
                )
            outcome = SagaRetried(
                saga_id=saga_id, saga_type=row["type"], run=row["run"], step=point["step"]
            )
            return _at(row, change)

        await self._transact(body, saga_id=saga_id)
        assert outcome is not None
        return outcome

    async def child_finished(self, event: SagaFinished, env: Envelope) -> None:
        parent_id = event.parent_id
        if not parent_id:
            return
        await self.store.settle(parent_id)

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            if not await self._record_inbox(conn, parent_id, env.message_id, now):
                return None
            row = await self._load(conn, parent_id)
            waiting = (row or {}).get("waiting") or {}
            if row is None:
                return None
            if waiting.get("kind") == Waiting.CHILDREN:
                return self._child_of_many_finished(row, waiting, event, env.message_id, now)
            if waiting.get("kind") != Waiting.CHILD or waiting.get("child_id") != event.saga_id:
                return None
            change = Change()
            if event.state in _LEFT_EFFECTS and waiting.get("compensate"):
                data = dict(row["data"])
                data["_compensations"] = [*data.get("_compensations", []), waiting["compensate"]]
                row = {**row, "data": data}
                change.values["data"] = data
            self._run_step(
                row, self._definition(row), waiting["then"], event, env.message_id, now, change
            )
            return _at(row, change)

        await self._transact(body, saga_id=parent_id)

    def _child_of_many_finished(
        self,
        row: dict[str, Any],
        waiting: dict[str, Any],
        event: SagaFinished,
        cause: str,
        now: float,
    ) -> Change | None:
        """One child of a ``StartChildren`` ended: keep its outcome; go on when all have."""
        children = [dict(c) for c in waiting["children"]]
        index = next((i for i, c in enumerate(children) if c["child_id"] == event.saga_id), None)
        if index is None or children[index].get("outcome") is not None:
            return None
        change = Change()
        child = children[index]
        child["outcome"] = msgspec.to_builtins(event)
        if event.state in _LEFT_EFFECTS and child.get("compensate"):
            data = dict(row["data"])
            data["_compensations"] = [*data.get("_compensations", []), child["compensate"]]
            row = {**row, "data": data}
            change.values["data"] = data
        change.history.append(
            self._history(
                row,
                row["step"],
                "child_finished",
                {"child_id": event.saga_id, "state": event.state},
                now,
            )
        )
        if all(c.get("outcome") is not None for c in children):
            outcomes = [msgspec.convert(c["outcome"], SagaFinished) for c in children]
            self._run_step(
                row, self._definition(row), waiting["then"], outcomes, cause, now, change
            )
        else:
            change.values["waiting"] = {**waiting, "children": children}
        return _at(row, change)

    async def due(self, now: float, limit: int = 500) -> list[str]:
        async with self.reads.connect() as conn:
            rows = await conn.execute(
                select(tables.instances.c.id)
                .where(
                    and_(tables.instances.c.wake_at.is_not(None), tables.instances.c.wake_at <= now)
                )
                .order_by(tables.instances.c.wake_at)
                .limit(limit)
            )
            return [r[0] for r in rows]

    async def wake(self, saga_id: str, *, continuing: bool = False) -> None:
        """Fire whatever timer of ``saga_id`` is due: a sleep, a timeout, a retry, a continue.

        ``continuing``: the process that committed a ``Continue`` goes straight on with it; the
        timer pass only picks such a step up after a grace period, if that process died.
        """
        hot = self.store.hot.get(saga_id)
        if hot is None:
            row = await self._read(saga_id)
            if row is None:
                return
            if self._definition(row).durability == "group" and self.publish is not None:
                hot = self.store.keep(saga_id, Hot(row, row["rev"]))
        if hot is not None:
            if self.clock() < self.timers_from:
                return

            def fire(row: dict[str, Any], now: float) -> Change | None:
                go_on = continuing and (row["waiting"] or {}).get("kind") == Waiting.CONTINUE
                if not go_on and (row["wake_at"] is None or row["wake_at"] > now):
                    return None
                return _at(row, self._on_timer(row, now))

            await self._transition(saga_id, hot, fire)
            return

        async def body(conn: AsyncConnection, now: float) -> Change | None:
            row = await self._load(conn, saga_id)
            if row is None:
                return None
            go_on = continuing and (row["waiting"] or {}).get("kind") == Waiting.CONTINUE
            if not go_on and (row["wake_at"] is None or row["wake_at"] > now):
                return None
            return _at(row, self._on_timer(row, now))

        await self._transact(body, saga_id=saga_id)

    # ── group mode: hot instances ─────────────────────────────────────────────────────

    async def _read(self, saga_id: str) -> dict[str, Any] | None:
        """The stored instance, without a lock (group mode decides in memory)."""
        return await self.storage.read(saga_id)

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
                row = self._new_row(
                    saga_id, definition, cmd.input, env, now, run_no=1, parent_id=None
                )
                change = Change()
                change.history.append(
                    self._history(row, None, "started", {"input": cmd.input}, now)
                )
                self._run_step(
                    row, definition, definition.first or "", None, env.message_id, now, change
                )
                ours = Hot({**row, **change.values}, None, start_id=env.message_id)
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
                    self.store.keep(saga_id, Hot(row, row["rev"])) if row is not None else None
                )
            if hot is not None:
                index = _waits_on(hot.row.get("waiting"), env.causation_id)
                if index is not None:
                    await self._transition(saga_id, hot, self._answer(index, event, env))
                    return
                if not _ahead(env.causation_id, hot.row):
                    return  # late: an attempt given up on, or a reply already taken
                self.store.forget(saga_id)  # perhaps another runner moved it on: reload
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"saga {saga_id}: a reply to {env.causation_id}, which it has not sent yet"
                )
            await asyncio.sleep(EARLY_POLL)

    def _answer(
        self, index: int, event: Any, env: Envelope
    ) -> Callable[[dict[str, Any], float], Change | None]:
        def decide(row: dict[str, Any], now: float) -> Change | None:
            found = _waits_on(row.get("waiting"), env.causation_id)
            if found is None:
                return None  # another delivery of it got there first
            if row["waiting"]["kind"] == Waiting.ALL:
                return _at(row, self._on_reply_all(row, found, event, env, now))
            return _at(row, self._on_reply(row, event, env, now))

        return decide

    async def _transition(
        self,
        saga_id: str,
        hot: Hot,
        decide: Callable[[dict[str, Any], float], Change | None],
    ) -> None:
        """Apply one transition to a hot instance: decide in memory, publish what it sends,
        and return once its state is committed."""
        now = self.clock()
        row = {**hot.row, "seq": hot.row["seq"] + 1}
        change = decide(row, now)
        if change is None:
            return
        hot.row = {
            **row,
            **{k: v for k, v in change.values.items() if k in row},
            "updated_at": now,
            "rev": hot.row["rev"] + 1,
        }
        await self._commit_hot(saga_id, hot, change, [])

    async def _commit_hot(
        self, saga_id: str, hot: Hot, change: Change, inbox: list[dict[str, Any]]
    ) -> None:
        assert self.publish is not None
        if change.children:
            raise RuntimeError("a group mode saga cannot start child sagas")
        publishing = None
        if change.outbox:
            rows = change.outbox
            publishing = (asyncio.ensure_future(self.publish(rows)), rows)
        await self.store.add(saga_id, hot, change.history, inbox, publishing)

    # ── transitions ────────────────────────────────────────────────────────────────────

    def _on_reply(self, row: dict[str, Any], event: Any, env: Envelope, now: float) -> Change:
        change = Change()
        waiting = row["waiting"]
        if isinstance(event, CommandFailed):
            change.history.append(
                self._history(
                    row,
                    row["step"],
                    "call_failed",
                    {"error": event.error, "attempt": waiting["attempt"]},
                    now,
                )
            )
            self._call_failed(row, waiting, event, env.message_id, now, change)
            return change
        elapsed = (now - waiting.get("sent_at", now)) * 1000
        change.history.append(
            self._history(
                row,
                row["step"],
                "reply",
                {"schema": env.schema, "attempt": waiting["attempt"]},
                now,
                elapsed,
            )
        )
        if waiting.get("compensate"):
            data = dict(row["data"])
            data["_compensations"] = [*data.get("_compensations", []), waiting["compensate"]]
            row = {**row, "data": data}
            change.values["data"] = data
        if waiting["then"] == _COMPENSATED:
            self._next_compensation(row, env.message_id, now, change)
        else:
            self._run_step(
                row, self._definition(row), waiting["then"], event, env.message_id, now, change
            )
        return change

    def _call_failed(
        self,
        row: dict[str, Any],
        waiting: dict[str, Any],
        failure: CommandFailed,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        error, retryable = failure.error, failure.retryable
        retry = Retry(**waiting["retry"])
        attempt = waiting["attempt"]
        deadline = waiting.get("deadline")
        if retryable and retry.allows(attempt, error) and (deadline is None or now < deadline):
            delay = retry.delay(attempt)
            change.values["waiting"] = {**waiting, "kind": Waiting.RETRY}
            change.values["wake_at"] = now + delay
            change.history.append(
                self._history(
                    row,
                    row["step"],
                    "retry_scheduled",
                    {"attempt": attempt + 1, "in_s": delay},
                    now,
                )
            )
            return
        if waiting["then"] == _COMPENSATED:
            self._finish(
                row,
                SagaState.COMPENSATION_FAILED,
                None,
                f"compensation failed: {error}",
                cause,
                now,
                change,
            )
            return
        if waiting.get("on_failure"):
            self._run_step(
                row, self._definition(row), waiting["on_failure"], failure, cause, now, change
            )
            return
        self._finish(
            row,
            SagaState.FAILED,
            None,
            f"{waiting['command']['schema']} failed: {error}",
            cause,
            now,
            change,
            code=failure.code,
        )

    def _on_timer(self, row: dict[str, Any], now: float) -> Change:
        change = Change()
        waiting = row["waiting"] or {}
        kind = waiting.get("kind")
        cause = f"timer-{row['id']}-{row['seq']}"
        if kind == Waiting.CALL:
            change.history.append(
                self._history(row, row["step"], "timed_out", {"attempt": waiting["attempt"]}, now)
            )
            self._call_failed(row, waiting, _timed_out(waiting), cause, now, change)
        elif kind == Waiting.RETRY:
            command = by_name(waiting["command"]["schema"]).decode(
                waiting["command"]["body"].encode()
            )
            self._send(
                row, command, cause, now, change, attempt=waiting["attempt"] + 1, waiting=waiting
            )
        elif kind == Waiting.ALL:
            self._on_timer_all(row, now, cause, change)
        elif kind == Waiting.SLEEP:
            change.history.append(self._history(row, row["step"], "timer_fired", None, now))
            self._run_step(row, self._definition(row), waiting["then"], None, cause, now, change)
        elif kind == Waiting.SIGNAL:
            change.history.append(
                self._history(row, row["step"], "signal_timed_out", {"name": waiting["name"]}, now)
            )
            if waiting.get("on_timeout"):
                self._run_step(
                    row, self._definition(row), waiting["on_timeout"], None, cause, now, change
                )
            else:
                self._finish(
                    row,
                    SagaState.FAILED,
                    None,
                    f"timed out waiting for signal {waiting['name']}",
                    cause,
                    now,
                    change,
                )
        elif kind == Waiting.CONTINUE:
            self._run_step(
                row,
                self._definition(row),
                waiting["then"],
                waiting.get("reply"),
                cause,
                now,
                change,
            )
        else:
            change.values["wake_at"] = None
        return change

    def _run_step(
        self,
        row: dict[str, Any],
        definition: Definition[Any],
        name: str,
        reply: Any,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        fn = definition.steps.get(name)
        # The step changes its own copy: a step that changes its data in place would otherwise
        # change the state before it too, which in group mode may still wait for its commit
        # and would then be committed with this step's effect on it (RECOVERY.md).
        given = change.values.get("data", row["data"])
        change.before = (name, given, reply)
        data = copy.deepcopy(given)
        if fn is None:
            self._finish(
                row,
                SagaState.FAILED,
                None,
                f"{definition.saga_type} v{definition.version} has no step {name!r}",
                cause,
                now,
                change,
            )
            return
        run: Run[Any] = Run(
            saga_id=row["id"],
            saga_type=row["type"],
            tenant=row["tenant"],
            correlation_id=row["correlation_id"],
            input=definition.decode_input(row["input"]),
            data=definition.decode_data(data),
            actor=row["actor"],
        )
        with tracing.saga_step(row["type"], name, row["id"]):  # its commands are its children
            try:
                action: Action = fn(run) if _arity(fn) == 1 else fn(run, reply)
            except Exception as exc:  # a bug in a definition ends that saga, not the runner
                log.exception("saga %s step %s raised", row["id"], name)
                action = Fail(f"step {name} raised {type(exc).__name__}: {exc}")
            data = definition.encode_data(run.data, data)
            change.values["data"] = data
            change.values["step"] = name
            row = {**row, "data": data, "step": name}
            self._apply(row, definition, name, action, cause, now, change)

    def _apply(
        self,
        row: dict[str, Any],
        definition: Definition[Any],
        name: str,
        action: Action,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        change.history.append(
            self._history(row, name, "step", {"action": type(action).__name__}, now)
        )
        if isinstance(action, Call):
            self._send(row, action.command, cause, now, change, attempt=1, call=action)
        elif isinstance(action, CallAll):
            self._send_all(row, definition, action, cause, now, change)
        elif isinstance(action, Reply):
            result = msgspec.to_builtins(action.result) if action.result is not None else None
            change.values["result"] = result
            replied = SagaReplied(saga_id=row["id"], saga_type=row["type"], result=result)
            self._emit(row, replied, f"{row['id']}.{row['run']}.replied", cause, now, change)
            self._continue(row, definition, step_name(action.then), None, cause, now, change)
        elif isinstance(action, Continue):
            then = step_name(action.then)
            self._continue(row, definition, then, action.reply, cause, now, change)
        elif isinstance(action, Sleep):
            change.values["waiting"] = {
                "kind": Waiting.SLEEP,
                "then": step_name(action.then),
                "until": now + action.seconds,
            }
            change.values["wake_at"] = now + action.seconds
        elif isinstance(action, WaitSignal):
            signals = list(row["data"].get("_signals", []))
            for i, sig in enumerate(signals):
                if sig["name"] == action.name:
                    del signals[i]
                    data = {**row["data"], "_signals": signals}
                    change.values["data"] = data
                    self._run_step(
                        {**row, "data": data},
                        definition,
                        step_name(action.then),
                        sig["payload"],
                        cause,
                        now,
                        change,
                    )
                    return
            change.values["waiting"] = {
                "kind": Waiting.SIGNAL,
                "name": action.name,
                "then": step_name(action.then),
                "on_timeout": step_name(action.on_timeout) if action.on_timeout else None,
                "timeout": action.timeout,
            }
            change.values["wake_at"] = now + action.timeout if action.timeout else None
        elif isinstance(action, StartChild):
            self._start_child(row, action, cause, now, change)
        elif isinstance(action, StartChildren):
            self._start_children(row, action, cause, now, change)
        elif isinstance(action, Complete):
            result = msgspec.to_builtins(action.result) if action.result is not None else None
            self._finish(row, SagaState.COMPLETED, result, None, cause, now, change)
        elif isinstance(action, Fail):
            if action.compensate and row["data"].get("_compensations"):
                change.values["state"] = SagaState.CANCELLING
                change.values["error"] = action.error
                self._next_compensation(row, cause, now, change)
            else:
                self._finish(row, SagaState.FAILED, None, action.error, cause, now, change)

    def _continue(
        self,
        row: dict[str, Any],
        definition: Definition[Any],
        then: str,
        reply: Any,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        """A step mode instance checkpoints and goes on in its own transaction; a group mode
        instance goes on at once (its steps are pure: running them in one transition is what a
        replay would do), each step numbered on as if it had been a transition of its own."""
        if definition.durability == "group" and change.inline < MAX_INLINE:
            change.inline += 1
            seq = change.values.get("seq", row["seq"]) + 1
            change.values["seq"] = seq
            current = {**row, **{k: v for k, v in change.values.items() if k in row}, "seq": seq}
            self._run_step(current, definition, then, reply, cause, now, change)
            return
        change.values["waiting"] = {
            "kind": Waiting.CONTINUE,
            "then": then,
            "reply": msgspec.to_builtins(reply),
        }
        change.values["wake_at"] = now + CONTINUE_GRACE
        change.wake_now.append(row["id"])

    def _command(
        self,
        row: dict[str, Any],
        command: msgspec.Struct,
        cause: str,
        now: float,
        change: Change,
        *,
        attempt: int,
    ) -> tuple[str, str, bytes]:
        """Put ``command`` in the outbox: its id (``<saga>.<run>.<seq>.<n>.<attempt>``, the same
        whenever the same transition is applied again), schema name and body."""
        entry = of_type(type(command))
        seq = row["seq"]
        message_id = f"{row['id']}.{row['run']}.{seq}.{len(change.outbox)}.{attempt}"
        if self._definition(row).durability == "group":
            message_id += GROUP_MARK
        env = Envelope(
            message_id=message_id,
            correlation_id=row["correlation_id"],
            causation_id=cause,
            tenant=row["tenant"],
            actor=row["actor"],
            schema=entry.name,
            version=entry.version,
            traceparent=tracing.current_traceparent(),
        )
        body = encode(command)
        change.outbox.append(
            {
                "id": message_id,
                "saga_id": row["id"],
                "subject": entry.subject(row["tenant"], row["correlation_id"]),
                "headers": env.to_headers(),
                "body": body,
                "created_at": now,
                "published_at": None,
            }
        )
        if not isinstance(command, SagaCancel):
            change.history.append(
                self._history(
                    row,
                    change.values.get("step", row["step"]),
                    "command_sent",
                    {"schema": entry.name, "message_id": message_id, "attempt": attempt},
                    now,
                    seq=seq,
                )
            )
        return message_id, entry.name, body

    def _send(
        self,
        row: dict[str, Any],
        command: msgspec.Struct,
        cause: str,
        now: float,
        change: Change,
        *,
        attempt: int,
        call: Call | None = None,
        waiting: dict[str, Any] | None = None,
    ) -> None:
        message_id, schema, body = self._command(row, command, cause, now, change, attempt=attempt)
        if isinstance(command, SagaCancel):
            return  # fire and forget: the child's end arrives as sagas.finished
        if call is not None:
            waiting = _call_waiting(call, schema, body, now)
        assert waiting is not None
        change.values["waiting"] = {
            **waiting,
            "kind": Waiting.CALL,
            "message_id": message_id,
            "attempt": attempt,
            "sent_at": now,
        }
        change.values["wake_at"] = now + waiting["timeout"] + self._grace(row)

    def _send_all(
        self,
        row: dict[str, Any],
        definition: Definition[Any],
        action: CallAll,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        if not action.calls:
            self._continue(row, definition, step_name(action.then), [], cause, now, change)
            return
        calls = []
        for call in action.calls:
            message_id, schema, body = self._command(
                row, call.command, cause, now, change, attempt=1
            )
            calls.append(
                {
                    **_call_waiting(call, schema, body, now),
                    "kind": Part.CALL,
                    "message_id": message_id,
                    "attempt": 1,
                    "sent_at": now,
                }
            )
        change.values["waiting"] = {
            "kind": Waiting.ALL,
            "then": step_name(action.then),
            "calls": calls,
        }
        change.values["wake_at"] = self._all_wake(row, calls)

    def _all_wake(self, row: dict[str, Any], calls: list[dict[str, Any]]) -> float | None:
        times = [
            c["sent_at"] + c["timeout"] + self._grace(row)
            if c["kind"] == Part.CALL
            else c["retry_at"]
            for c in calls
            if c["kind"] != Part.DONE
        ]
        return min(times) if times else None

    def _grace(self, row: dict[str, Any]) -> float:
        """How much longer a group mode instance waits before it calls a reply missing: long
        enough for the replay of an event its lost transition consumed (RECOVERY.md)."""
        if self._definition(row).durability == "group":
            return self.replay_grace
        return 0.0

    def _on_reply_all(
        self, row: dict[str, Any], index: int, event: Any, env: Envelope, now: float
    ) -> Change:
        change = Change()
        waiting = row["waiting"]
        calls = [dict(c) for c in waiting["calls"]]
        call = calls[index]
        if isinstance(event, CommandFailed):
            change.history.append(
                self._history(
                    row,
                    row["step"],
                    "call_failed",
                    {"error": event.error, "attempt": call["attempt"]},
                    now,
                )
            )
            if not self._part_failed(row, calls, index, event, env.message_id, now, change):
                return change
        else:
            change.history.append(
                self._history(
                    row,
                    row["step"],
                    "reply",
                    {"schema": env.schema, "attempt": call["attempt"]},
                    now,
                    (now - call["sent_at"]) * 1000,
                )
            )
            calls[index] = {
                **call,
                "kind": Part.DONE,
                "reply": {"schema": env.schema, "body": msgspec.to_builtins(event)},
            }
        self._all_next(row, waiting, calls, env.message_id, now, change)
        return change

    def _part_failed(
        self,
        row: dict[str, Any],
        calls: list[dict[str, Any]],
        index: int,
        failure: CommandFailed,
        cause: str,
        now: float,
        change: Change,
    ) -> bool:
        """One call of a ``CallAll`` failed: retry it, record its failure for ``then``, or fail
        the saga (False)."""
        call = calls[index]
        error, retryable = failure.error, failure.retryable
        retry = Retry(**call["retry"])
        deadline = call.get("deadline")
        if (
            retryable
            and retry.allows(call["attempt"], error)
            and (deadline is None or now < deadline)
        ):
            delay = retry.delay(call["attempt"])
            calls[index] = {**call, "kind": Part.RETRY, "retry_at": now + delay}
            change.history.append(
                self._history(
                    row,
                    row["step"],
                    "retry_scheduled",
                    {"attempt": call["attempt"] + 1, "in_s": delay},
                    now,
                )
            )
            return True
        schema = call["command"]["schema"]
        if call.get("on_failure"):
            calls[index] = {
                **call,
                "kind": Part.DONE,
                "reply": {"schema": "failed", "body": msgspec.to_builtins(failure)},
            }
            return True
        self._finish(
            row,
            SagaState.FAILED,
            None,
            f"{schema} failed: {error}",
            cause,
            now,
            change,
            code=failure.code,
        )
        return False

    def _all_next(
        self,
        row: dict[str, Any],
        waiting: dict[str, Any],
        calls: list[dict[str, Any]],
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        if all(c["kind"] == Part.DONE for c in calls):
            replies = [_decoded(c["reply"]) for c in calls]
            self._run_step(row, self._definition(row), waiting["then"], replies, cause, now, change)
            return
        change.values["waiting"] = {**waiting, "calls": calls}
        change.values["wake_at"] = self._all_wake(row, calls)

    def _on_timer_all(self, row: dict[str, Any], now: float, cause: str, change: Change) -> None:
        waiting = row["waiting"]
        calls = [dict(c) for c in waiting["calls"]]
        for i, call in enumerate(calls):
            if (
                call["kind"] == Part.CALL
                and call["sent_at"] + call["timeout"] + self._grace(row) <= now
            ):
                change.history.append(
                    self._history(row, row["step"], "timed_out", {"attempt": call["attempt"]}, now)
                )
                if not self._part_failed(row, calls, i, _timed_out(call), cause, now, change):
                    return
            elif call["kind"] == Part.RETRY and call["retry_at"] <= now:
                command = by_name(call["command"]["schema"]).decode(
                    call["command"]["body"].encode()
                )
                attempt = call["attempt"] + 1
                message_id, _, _ = self._command(row, command, cause, now, change, attempt=attempt)
                calls[i] = {
                    **call,
                    "kind": Part.CALL,
                    "message_id": message_id,
                    "attempt": attempt,
                    "sent_at": now,
                }
        self._all_next(row, waiting, calls, cause, now, change)

    def _emit(
        self,
        row: dict[str, Any],
        event: msgspec.Struct,
        message_id: str,
        cause: str,
        now: float,
        change: Change,
    ) -> None:
        entry = of_type(type(event))
        env = Envelope(
            message_id=message_id,
            correlation_id=row["correlation_id"],
            causation_id=cause,
            tenant=row["tenant"],
            actor=row["actor"],
            schema=entry.name,
            traceparent=tracing.current_traceparent(),
        )
        change.outbox.append(
            {
                "id": env.message_id,
                "saga_id": row["id"],
                "subject": entry.subject(row["tenant"]),
                "headers": env.to_headers(),
                "body": encode(event),
                "created_at": now,
                "published_at": None,
            }
        )

    def _next_compensation(
        self, row: dict[str, Any], cause: str, now: float, change: Change
    ) -> None:
        data = dict(change.values.get("data", row["data"]))
        pending = list(data.get("_compensations", []))
        if not pending:
            ended = SagaState.COMPENSATED if data.get("_compensated") else SagaState.CANCELLED
            self._finish(
                row, ended, None, change.values.get("error", row["error"]), cause, now, change
            )
            return
        spec = pending.pop()
        data["_compensations"] = pending
        data["_compensated"] = data.get("_compensated", 0) + 1
        change.values["data"] = data
        command = by_name(spec["schema"]).decode(spec["body"].encode())
        call = Call(command, then=_COMPENSATED, timeout=60, retry=_COMPENSATION_RETRY)
        self._send({**row, "data": data}, command, cause, now, change, attempt=1, call=call)

    def _start_child(
        self, row: dict[str, Any], action: StartChild, cause: str, now: float, change: Change
    ) -> None:
        child_id = self._new_child(
            row, action, action.child_id or f"{row['id']}.child{row['seq']}", cause, now, change
        )
        change.values["waiting"] = {
            "kind": Waiting.CHILD,
            "child_id": child_id,
            "then": step_name(action.then),
            "compensate": _spec(action.compensate),
        }
        change.values["wake_at"] = None

    def _start_children(
        self, row: dict[str, Any], action: StartChildren, cause: str, now: float, change: Change
    ) -> None:
        if not action.children:
            self._continue(
                row, self._definition(row), step_name(action.then), [], cause, now, change
            )
            return
        children = []
        for i, child in enumerate(action.children):
            default_id = f"{row['id']}.child{row['seq']}.{i}"
            child_id = self._new_child(row, child, child.child_id or default_id, cause, now, change)
            children.append(
                {"child_id": child_id, "compensate": _spec(child.compensate), "outcome": None}
            )
        change.values["waiting"] = {
            "kind": Waiting.CHILDREN,
            "children": children,
            "then": step_name(action.then),
        }
        change.values["wake_at"] = None

    def _new_child(
        self,
        row: dict[str, Any],
        action: StartChild,
        child_id: str,
        cause: str,
        now: float,
        change: Change,
    ) -> str:
        """Add a child instance to ``change``: inserted in the parent's transaction, woken at
        once after the commit."""
        definition = self.registry.latest(action.saga_type)
        seq = row["seq"]
        raw = msgspec.to_builtins(action.input)
        env = Envelope(
            message_id=cause,
            correlation_id=row["correlation_id"],
            tenant=row["tenant"],
            actor=row["actor"],
            schema="sagas.start",
        )
        child = self._new_row(child_id, definition, raw, env, now, run_no=1, parent_id=row["id"])
        child["waiting"] = {"kind": Waiting.CONTINUE, "then": definition.first, "reply": None}
        child["wake_at"] = now + CONTINUE_GRACE
        change.children.append(child)
        change.wake_now.append(child_id)
        change.history.append(
            self._history(
                row,
                change.values.get("step", row["step"]),
                "child_started",
                {"child_id": child_id, "type": action.saga_type},
                now,
                seq=seq,
            )
        )
        return child_id

    def _finish(
        self,
        row: dict[str, Any],
        state: SagaState,
        result: dict[str, Any] | None,
        error: str | None,
        cause: str,
        now: float,
        change: Change,
        *,
        code: FailureCode | None = None,
    ) -> None:
        if state == SagaState.FAILED:
            self._keep_resume_point(row, change)
        change.values.update(
            state=state,
            result=result,
            error=error,
            error_code=code,
            waiting=None,
            wake_at=None,
            finished_at=now,
        )
        event = SagaFinished(
            saga_id=row["id"],
            saga_type=row["type"],
            state=state,
            result=result,
            error=error,
            parent_id=row.get("parent_id"),
            error_code=code,
        )
        self._emit(row, event, f"{row['id']}.{row['run']}.finished", cause, now, change)
        change.history.append(
            self._history(
                row,
                change.values.get("step", row["step"]),
                state,
                {"error": error} if error else None,
                now,
                duration_ms=(now - row["created_at"]) * 1000,
            )
        )

    def _keep_resume_point(self, row: dict[str, Any], change: Change) -> None:
        """Keep where a failing instance failed, for ``retry``: the step that failed it, or
        the wait it failed in."""
        if change.before is not None:
            point: dict[str, Any] | None = operations.failed_in_step(*change.before)
        else:
            point = operations.failed_waiting(row["step"], row.get("waiting"))
        if point is not None:
            change.values["data"] = {
                **change.values.get("data", row["data"]),
                operations.RESUME: point,
            }

    # ── persistence ────────────────────────────────────────────────────────────────────

    def _definition(self, row: dict[str, Any]) -> Definition[Any]:
        return self.registry.get(row["type"], row["version"])

    def _new_row(
        self,
        saga_id: str,
        definition: Definition[Any],
        raw_input: dict[str, Any],
        env: Envelope,
        now: float,
        *,
        run_no: int,
        parent_id: str | None,
    ) -> dict[str, Any]:
        return {
            "id": saga_id,
            "type": definition.saga_type,
            "version": definition.version,
            "run": run_no,
            "tenant": env.tenant,
            "correlation_id": env.correlation_id,
            "actor": env.actor,
            "parent_id": parent_id,
            "state": SagaState.RUNNING,
            "step": None,
            "input": raw_input,
            "data": {},
            "waiting": None,
            "wake_at": None,
            "result": None,
            "error": None,
            "error_code": None,
            "seq": 1,
            "rev": 0,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
        }

    def _history(
        self,
        row: dict[str, Any],
        step: str | None,
        event: str,
        detail: dict[str, Any] | None,
        now: float,
        duration_ms: float | None = None,
        *,
        seq: int | None = None,
    ) -> dict[str, Any]:
        return {
            "saga_id": row["id"],
            "run": row["run"],
            "seq": row["seq"] if seq is None else seq,
            "step": step,
            "event": event,
            "detail": detail,
            "at": now,
            "duration_ms": duration_ms,
        }

    async def _record_inbox(
        self, conn: AsyncConnection, saga_id: str, message_id: str, now: float
    ) -> bool:
        return await self.storage.record_inbox(conn, saga_id, message_id, now)

    async def _load(self, conn: AsyncConnection, saga_id: str) -> dict[str, Any] | None:
        loaded = await self.storage.load(conn, saga_id)
        if loaded is None:
            return None
        loaded["seq"] += 1  # every transition is numbered; history is unique per number
        return loaded

    async def _transact(
        self,
        body: Callable[[AsyncConnection, float], Awaitable[Change | None]],
        *,
        saga_id: str | None,
    ) -> None:
        for attempt in range(20):
            try:
                async with self.db.begin() as conn:
                    now = self.clock()
                    change = await body(conn, now)
                    if change is None:
                        return
                    if change.values and saga_id is not None:
                        await self._save(conn, saga_id, change, now)
                    for child in change.children:
                        await conn.execute(tables.instances.insert().values(**child))
                    if change.history:
                        await conn.execute(tables.history.insert(), _numbered(change.history))
                    if change.outbox:
                        await conn.execute(tables.outbox.insert(), change.outbox)
            except RevMoved:
                log.debug("saga %s advanced elsewhere; retrying (%d)", saga_id, attempt)
                continue
            if self.on_commit is not None and (change.outbox or change.wake_now):
                await self.on_commit(change.outbox, change.wake_now)
            return
        raise RuntimeError(f"saga {saga_id}: gave up after repeated concurrent updates")

    async def _save(self, conn: AsyncConnection, saga_id: str, change: Change, now: float) -> None:
        rev = change.rev
        values = {**change.values, "updated_at": now, "rev": (rev or 0) + 1}
        if not await self.storage.save(conn, saga_id, rev, values):
            raise RevMoved(saga_id)


def is_group_command(message_id: str | None) -> bool:
    if not message_id or not message_id.endswith(GROUP_MARK):
        return False
    return saga_of_command(message_id) is not None


def _ahead(message_id: str, row: dict[str, Any]) -> bool:
    """True when ``message_id`` names a command of a transition after ``row``'s last one."""
    parts = message_id.removesuffix(GROUP_MARK).rsplit(".", 4)
    return (int(parts[1]), int(parts[2])) > (row["run"], row["seq"])


def saga_of_command(message_id: str | None) -> str | None:
    """The saga that sent a command, read from the id the engine gave it:
    ``<saga id>.<run>.<seq>.<n>.<attempt>`` (``.g`` after it in group mode); None for anything
    else."""
    if not message_id:
        return None
    message_id = message_id.removesuffix(GROUP_MARK)
    parts = message_id.rsplit(".", 4)
    if len(parts) != 5 or not all(p.isdigit() for p in parts[1:]):
        return None
    return parts[0]


def _call_waiting(call: Call, schema: str, body: bytes, now: float) -> dict[str, Any]:
    """What an instance remembers of a call it waits on: enough to retry, time out, fall back
    and compensate without the definition's objects."""
    return {
        "kind": Waiting.CALL,
        "then": step_name(call.then),
        "command": {"schema": schema, "body": body.decode()},
        "retry": {
            "initial": call.retry.initial,
            "coefficient": call.retry.coefficient,
            "maximum": call.retry.maximum,
            "max_attempts": call.retry.max_attempts,
            "non_retryable": list(call.retry.non_retryable),
        },
        "timeout": call.timeout,
        "deadline": now + call.schedule_to_close if call.schedule_to_close else None,
        "schedule_to_close": call.schedule_to_close,
        "compensate": _spec(call.compensate),
        "on_failure": step_name(call.on_failure) if call.on_failure else None,
    }


def _spec(command: msgspec.Struct | None) -> dict[str, Any] | None:
    """A command as an instance stores it (to send later): its schema name and JSON body."""
    if command is None:
        return None
    return {"schema": of_type(type(command)).name, "body": encode(command).decode()}


def _decoded(reply: dict[str, Any]) -> Any:
    if reply["schema"] == "failed":
        return msgspec.convert(reply["body"], CommandFailed)
    return msgspec.convert(reply["body"], by_name(reply["schema"]).type)


def _waits_on(waiting: dict[str, Any] | None, message_id: str | None) -> int | None:
    """Which call of ``waiting`` a reply to ``message_id`` answers: 0 for a lone call, the
    index within a ``CallAll``; None when it answers none (late, duplicate, or not ours)."""
    if not waiting or not message_id:
        return None
    if waiting.get("kind") == Waiting.CALL:
        return 0 if waiting.get("message_id") == message_id else None
    if waiting.get("kind") == Waiting.ALL:
        for i, call in enumerate(waiting["calls"]):
            if call["kind"] == Part.CALL and call["message_id"] == message_id:
                return i
    return None


def _at(row: dict[str, Any], change: Change) -> Change:
    change.rev = row["rev"]
    change.values.setdefault("seq", row["seq"])
    return change


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


def _timed_out(waiting: dict[str, Any]) -> CommandFailed:
    """A call's start-to-close timeout, as the failure its retry policy judges."""
    return CommandFailed(
        command=waiting["command"]["schema"],
        error="timeout: no reply within start-to-close",
        retryable=True,
    )
