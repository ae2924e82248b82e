"""Every direct turn ends in SOMA_EVT, even when the gateway running it is killed.

A direct turn (``SOMA_CHAT_PIPELINE=direct``, gateway/direct.py) is run by the gateway that holds
its caller's connection, and its end, ``gateway.turn_finished``, is that gateway's to publish
once the caller has the answer. A gateway killed mid-turn never publishes it: the commands it
had sent still run to their effects, and the turn's trail would stay open for good, an operator
tailing SOMA_EVT and analytics counting runs waiting for an end that does not come.

The runner reads every event anyway, so it keeps the watch:

- a direct turn's first answer (the reply to its ``<turn>.prompt`` or ``<turn>.recall``
  command) writes the turn's row, due ``SOMA_TURN_DEADLINE`` seconds later;
- the turn's end, whoever published it, takes the deadline off; the row stays a while, so a late
  redelivery of the first answer does not watch an ended turn again;
- a deadline that passes publishes the end the gateway did not: ``gateway.turn_finished``,
  failed, ``unavailable``, under the id the gateway would have given it
  (``schemas.envelope.turn_end_id``). Analytics counts it as a failed ``chat_turn`` run.

Recovery. The rows are in the saga store, written before the event that caused them is
acknowledged: a runner killed mid-watch leaves them to the next. A deadline is taken off only
after its end is stored, so a runner killed between the two publishes the end again, under the
same id. Two runners, or a live gateway whose own end comes after the runner's, publish one end
under one id, and the server keeps the first within its duplicate window
(``SOMA_DEDUP_WINDOW``): the deadline is set above the gateways' ``SOMA_CHAT_TIMEOUT``, so a
live gateway's end is stored before it and reaches the runner in time unless the runner has
fallen that far behind its events.

A direct turn with neither a prompt check nor a recall (no policy, no memory) sends the model
its first command, as a pass-through turn does; it is not watched.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from bus.publish import envelope_for, publish
from bus.service import Connected
from kernel.db import in_transaction, reader
from sagas.tables import turn_watch
from schemas.chat import ChatTurnFinished
from schemas.common import FailureCode
from schemas.envelope import Envelope, sender_of, turn_end_id

log = logging.getLogger("soma.sagas.turns")

# The steps whose answers are a direct turn's first: one of them comes for every watched turn.
FIRST_STEPS = frozenset({"prompt", "recall"})
# Turns watched by this process lately: the second first answer of a turn writes nothing.
REMEMBERED = 4096
ABANDONED = "The gateway running this turn stopped before its end."
# How long the watch's writes gather before one transaction: only the acks of the events that
# caused them wait for it, never a turn. Sooner once EARLY wait, so the events whose acks wait
# never fill the runner's hand (its consumer's concurrency), which saga replies share.
WINDOW = 0.1
EARLY = 16
FORGET_AT_ONCE = 2000  # rows of long-ended turns deleted in one transaction

_W = turn_watch.c


def _ending(dialect: Any) -> Any:
    """The end of a turn: its deadline off, whether or not its first answer was seen yet."""
    insert = dialect.insert(turn_watch)
    return insert.on_conflict_do_update(
        index_elements=["correlation_id"],
        set_={"deadline": None, "ended_at": insert.excluded.ended_at},
    )


_DIALECTS = (("postgresql", postgresql), ("sqlite", sqlite))
_WATCH = {name: d.insert(turn_watch).on_conflict_do_nothing() for name, d in _DIALECTS}
_END = {name: _ending(d) for name, d in _DIALECTS}


def first_answer(env: Envelope) -> bool:
    """Whether ``env`` is the answer to a direct turn's prompt check or recall."""
    cause = env.causation_id or ""
    if sender_of(cause, env.correlation_id) != "gateway":
        return False
    return cause.rpartition(".")[2] in FIRST_STEPS


@dataclass
class TurnWatch:
    """The deadlines of direct turns in the saga store, and the ends of those that pass them."""

    db: AsyncEngine
    deadline: float  # seconds from a turn's first answer
    clock: Callable[[], float]
    _watched: dict[str, None] = field(default_factory=dict, init=False)
    _pending: list[tuple[Any, dict[str, Any]]] = field(default_factory=list, init=False)
    _batch: asyncio.Future[None] | None = field(default=None, init=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False)
    _commits: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def saw(self, event: Any, env: Envelope) -> None:
        """Follow one event that is no saga's: a turn's first answer or its end."""
        if isinstance(event, ChatTurnFinished):
            await self._ended(env.correlation_id)
        elif first_answer(env) and env.correlation_id not in self._watched:
            await self._watch(env)

    async def _watch(self, env: Envelope) -> None:
        insert = _WATCH[self.db.dialect.name]
        row = {
            "correlation_id": env.correlation_id,
            "tenant": env.tenant,
            "actor": env.actor,
            "started_at": env.timestamp,
            "deadline": self.clock() + self.deadline,
            "ended_at": None,
        }
        # Remembered before the write commits, so the turn's other first answer, which comes
        # at about the same moment, writes nothing: if this write fails, its event is
        # delivered again and is not skipped.
        self._watched[env.correlation_id] = None
        if len(self._watched) > REMEMBERED:
            del self._watched[next(iter(self._watched))]
        try:
            await self._write(insert, row)
        except BaseException:
            self._watched.pop(env.correlation_id, None)
            raise

    async def _ended(self, turn: str) -> None:
        now = self.clock()
        ending = _END[self.db.dialect.name]
        row = {
            "correlation_id": turn,
            "tenant": "",
            "actor": "",
            "started_at": now,
            "deadline": None,
            "ended_at": now,
        }
        await self._write(ending, row)

    async def _write(self, statement: Any, row: dict[str, Any]) -> None:
        """Write ``row`` in the next group commit; returns once it is committed. A turn's two
        writes, each a commit of their own, cost the runner more CPU than the rest of its work
        on the turn's events (bench/gateway.py's CPU table)."""
        self._pending.append((statement, row))
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = loop.create_future()
            self._timer = loop.call_later(WINDOW, self._commit_now)
        elif len(self._pending) >= EARLY and self._timer is not None:
            self._timer.cancel()
            self._commit_now()
        await asyncio.shield(batch)

    def _commit_now(self) -> None:
        task = asyncio.ensure_future(self._commit())
        self._commits.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._commits.discard)

    async def _commit(self) -> None:
        batch, self._batch, self._timer = self._batch, None, None
        writes, self._pending = self._pending, []

        def work(conn: Connection) -> None:
            for _, same in itertools.groupby(writes, key=lambda w: id(w[0])):
                group = list(same)
                conn.execute(group[0][0], [row for _, row in group])

        try:
            await in_transaction(self.db, work, on_loop=True)
        except Exception as exc:
            if batch is not None:
                batch.set_exception(exc)
        else:
            if batch is not None:
                batch.set_result(None)

    async def overdue(self, bus: Connected, limit: int = 100) -> int:
        """Publish the end of each turn past its deadline; how many were ended."""
        now = self.clock()
        due = select(turn_watch).where(_W.deadline <= now).order_by(_W.deadline).limit(limit)
        async with reader(self.db).connect() as conn:
            rows = (await conn.execute(due)).mappings().all()
        for row in rows:
            turn = row["correlation_id"]
            end = ChatTurnFinished(
                state="failed",
                started_at=row["started_at"],
                error=ABANDONED,
                error_code=FailureCode.UNAVAILABLE,
            )
            env = envelope_for(
                end,
                tenant=row["tenant"],
                actor=row["actor"],
                correlation_id=turn,
                message_id=turn_end_id(turn),
            )
            await publish(bus, end, env)
            log.warning(
                "turn %s had no end %.0f s on: its gateway stopped; ended it", turn, self.deadline
            )
        # Taken off once their ends are stored, in one commit; ends published again by a
        # runner killed before it are dropped by the server as the same messages.
        await asyncio.gather(*(self._ended(row["correlation_id"]) for row in rows))
        return len(rows)

    async def forget(self) -> int:
        """Drop the rows of turns ended longer ago than a deadline: past any redelivery of
        their first answers. A few thousand a transaction: a minute of a busy system's turns
        deleted at once would hold the saga store's write lock (on SQLite) from the runner's
        own commits."""
        before = self.clock() - self.deadline
        some = select(_W.correlation_id).where(_W.ended_at < before).limit(FORGET_AT_ONCE)

        def work(conn: Connection) -> int:
            return conn.execute(delete(turn_watch).where(_W.correlation_id.in_(some))).rowcount

        forgotten = 0
        while True:
            done = await in_transaction(self.db, work)
            forgotten += done
            if done < FORGET_AT_ONCE:
                return forgotten
