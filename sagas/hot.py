"""Hot instances of group mode sagas and their group commits.

A group mode instance lives in memory while it runs: a transition updates it at once, its
commands are published at once, and its new state joins the next group commit — one transaction
for every transition of every instance that happened since the last one. Whoever triggered a
transition waits for that commit before acknowledging its message (see sagas/RECOVERY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from kernel.db import in_transaction
from sagas import tables
from sagas.change import Instance
from sagas.storage import AT_REV, Storage
from schemas.sagas import ENDED

log = logging.getLogger("soma.sagas.hot")

# How long the committer lets transitions gather before it writes them. Only acks wait for the
# commit, never a command or an answer, so the window costs a turn nothing, while each commit
# costs the runner's one event loop a few milliseconds that the next reply waits behind: a chat
# turn's transitions (a few milliseconds apart) then share one or two commits, not one each.
WINDOW = 0.03
# Triggers waiting for a commit that cut the window short: each holds one of the consumer's
# slots (SOMA_FETCH_BATCH, 64 by default) until it is acked, and a hand full of waiting
# triggers would stop the runner taking new messages.
EARLY = 24
# Instances kept in memory at most; the oldest settled ones are let go first.
CAPACITY = 20_000


# Built once, as ``storage.AT_REV`` is: SQLAlchemy then compiles it once, where a statement
# built per instance costs a cache key every time.
_INSERT = tables.instances.insert()
# What every transition of a hot instance changes besides the columns it sets.
_NUMBERING = ("seq", "rev", "updated_at")


class LostTransition(RuntimeError):
    """A transition was not committed (a conflict or a database error): its trigger must be
    redelivered and applied again to the committed state."""


@dataclass
class Hot:
    """One instance in memory: its latest state, committed or not."""

    row: Instance
    # The rev of the last state handed to a commit; None while the instance is not inserted.
    flushed_rev: int | None
    start_id: str | None = None


@dataclass
class Pending:
    """What one instance's transitions since the last commit will write."""

    hot: Hot
    row: Instance
    base_rev: int | None  # the rev the stored row must have; None: insert it
    # The columns its transitions set: an update writes those (with the numbering columns),
    # not the input and the rest that no transition changes, re-encoded at every commit.
    written: set[str] = field(default_factory=set)
    history: list[dict[str, Any]] = field(default_factory=list)
    inbox: list[dict[str, Any]] = field(default_factory=list)
    publishing: list[tuple[asyncio.Future[Any], list[dict[str, Any]]]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


Numbered = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


class HotStore:
    def __init__(self, storage: Storage, numbered: Numbered) -> None:
        self.db = storage.db
        self.storage = storage
        self.numbered = numbered
        self.hot: dict[str, Hot] = {}
        self.pending: dict[str, Pending] = {}
        self.wake = asyncio.Event()
        self.full = asyncio.Event()
        self.waiting = 0  # triggers waiting for the next commit
        self.lock = asyncio.Lock()

    def add(
        self,
        saga_id: str,
        hot: Hot,
        written: Collection[str],
        history: list[dict[str, Any]],
        inbox: list[dict[str, Any]],
        publishing: tuple[asyncio.Future[Any], list[dict[str, Any]]] | None,
    ) -> asyncio.Future[None]:
        """Queue ``hot``'s current state for the next commit; the future resolves once it is
        committed (or fails with ``LostTransition``)."""
        pending = self.pending.get(saga_id)
        if pending is None or pending.hot is not hot:
            if pending is not None:  # a stale instance's writes: they could only conflict
                self._fail(pending, "the instance was reloaded")
            pending = self.pending[saga_id] = Pending(hot, hot.row, hot.flushed_rev)
        pending.row = hot.row
        pending.written.update(written)
        pending.history.extend(history)
        pending.inbox.extend(inbox)
        if publishing is not None:
            pending.publishing.append(publishing)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending.waiters.append(waiter)
        self.waiting += 1
        self.wake.set()
        if self.waiting >= EARLY:
            self.full.set()
        return waiter

    def keep(self, saga_id: str, hot: Hot) -> Hot:
        """Hold ``hot`` in memory unless another copy got there first; return the one held."""
        held = self.hot.setdefault(saga_id, hot)
        if len(self.hot) > CAPACITY:
            for old in list(self.hot)[: len(self.hot) - CAPACITY]:
                if old not in self.pending and old != saga_id:
                    self.hot.pop(old, None)
        return held

    def forget(self, saga_id: str) -> None:
        """Let an instance go from memory (it is reloaded from the database when next needed)
        once nothing of it waits to be committed."""
        if saga_id not in self.pending:
            self.hot.pop(saga_id, None)

    async def settle(self, saga_id: str) -> None:
        """Commit whatever of ``saga_id`` is pending and let it go from memory, so that a step
        mode transaction (a signal, a cancel) meets its stored state."""
        if saga_id in self.hot:
            await self.flush()
            self.hot.pop(saga_id, None)

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WINDOW):
                    await self.full.wait()
            self.full.clear()
            try:
                await self.flush()
            except Exception as exc:  # each batch's waiters have been told already
                log.warning("group commit failed: %s", exc)

    async def flush(self) -> None:
        async with self.lock:
            while self.pending:
                batch, self.pending = self.pending, {}
                self.waiting = 0
                for pending in batch.values():
                    pending.hot.flushed_rev = pending.row.rev
                await self._commit(batch)

    async def _commit(self, batch: dict[str, Pending]) -> None:
        unpublished: dict[str, list[dict[str, Any]]] = {}
        for saga_id, pending in batch.items():
            for task, rows in pending.publishing:
                with contextlib.suppress(Exception):
                    await task
                if task.cancelled() or task.exception() is not None:
                    unpublished.setdefault(saga_id, []).extend(rows)
        try:
            await in_transaction(self.db, lambda conn: self._write(conn, batch, unpublished))
        except Exception as exc:
            if len(batch) == 1:
                for saga_id, pending in batch.items():
                    log.warning("saga %s: transition not committed: %s", saga_id, exc)
                    self._lose(saga_id, pending, str(exc))
                return
            # One instance's conflict must not cost the others theirs: one at a time.
            for saga_id, pending in batch.items():
                await self._commit({saga_id: pending})
            return
        for saga_id, pending in batch.items():
            for waiter in pending.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if pending.row.state in ENDED and self.hot.get(saga_id) is pending.hot:
                self.forget(saga_id)

    def _write(
        self,
        conn: Connection,
        batch: dict[str, Pending],
        unpublished: dict[str, list[dict[str, Any]]],
    ) -> None:
        """The whole group commit, in one synchronous transaction (``in_transaction``): on
        SQLite one worker thread runs it, rather than a thread hand-off per statement."""
        for saga_id, pending in batch.items():
            self._write_row(conn, saga_id, pending)
        history = [h for p in batch.values() for h in p.history]
        if history:
            conn.execute(tables.history.insert(), self.numbered(history))
        inbox = [i for p in batch.values() for i in p.inbox]
        if inbox:
            conn.execute(self.storage.insert_new_inbox, inbox)
        outbox = [r for rows in unpublished.values() for r in rows]
        if outbox:
            # Not published (NATS was away): the relay's sweep sends them from the outbox.
            conn.execute(tables.outbox.insert(), outbox)

    def _write_row(self, conn: Connection, saga_id: str, pending: Pending) -> None:
        row = pending.row
        if pending.base_rev is None:
            conn.execute(_INSERT, row.to_row())
            return
        values = {name: getattr(row, name) for name in (*pending.written, *_NUMBERING)}
        result = conn.execute(AT_REV, {**values, "_id": saga_id, "_rev": pending.base_rev})
        if result.rowcount != 1:
            raise IntegrityError("rev check", None, Exception(f"saga {saga_id} advanced elsewhere"))

    def _lose(self, saga_id: str, pending: Pending, why: str) -> None:
        if self.hot.get(saga_id) is pending.hot:
            self.hot.pop(saga_id, None)
        self._fail(pending, why)
        later = self.pending.get(saga_id)
        if later is not None and later.hot is pending.hot:
            del self.pending[saga_id]
            self._fail(later, why)

    def _fail(self, pending: Pending, why: str) -> None:
        for waiter in pending.waiters:
            if not waiter.done():
                waiter.set_exception(LostTransition(why))


Publish = Callable[[list[dict[str, Any]]], Awaitable[None]]
