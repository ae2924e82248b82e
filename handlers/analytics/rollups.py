"""Counting events into the daily rollups, each event exactly once, in whatever order they come.

Delivery is at-least-once, and an operator may replay the events stream into a fresh consumer, so
every count runs in one transaction with the insert of the event's message id: an id already
there means the event was counted, and nothing changes. A batch of events shares one
transaction (``count_batch``): the ids and counts of all of them commit together or not at all.
The batch's ids are recorded first, by one statement in id order, so what was counted before is
known before anything is counted. Totals are added by an upsert that increments in SQL, so any
number of analytics replicas can count into the same row at once; a transaction sums its events'
totals per row first (``Totals``) and adds them at its end, one upsert per row in key order.

Order is not guaranteed either: a batch holds whatever arrived, and replicas run side by side.
So a model call may be counted before its saga's start (it waits, unattributed, until the start
names the saga type), and a saga's end before its start (its duration is added when the start
arrives). Both sides of each pair first upsert the row they share — the correlation, or the
saga — which holds it locked until commit: the pair never interleaves.

An event's day is the UTC day of its envelope timestamp, not of its processing: a backlog worked
off after midnight still counts for the day the work was done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, Row, Table, bindparam, case, delete, exists, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.analytics.tables import (
    MODEL,
    SAGA,
    correlations,
    processed,
    sagas,
    unattributed,
    usage_daily,
)
from kernel.db import in_transaction
from schemas.chat import ChatTurnFinished
from schemas.common import CommandFailed
from schemas.envelope import Envelope
from schemas.sagas import FAILED, SagaFinished, SagaStarted
from schemas.slm import SlmCompleted

# Saga end states that count as errors; a cancelled (or cancelled-and-compensated) saga is not one.

SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_count",
)


@dataclass(frozen=True)
class Fact:
    """One event's contribution to its rollup row."""

    tenant: str
    day: date
    kind: str
    model: str = ""
    saga_type: str = ""
    actor: str = ""
    key_id: str = ""
    requests: int = 1
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms_sum: float = 0.0
    latency_count: int = 0


def event_time(env: Envelope) -> float:
    return env.timestamp or time.time()


def day_of(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, UTC).date()


# The dialect's INSERT, for its ON CONFLICT clause (both databases spell it alike).
Upsert = postgresql.Insert | sqlite.Insert
InsertOf = Callable[[Table], Upsert]


def _upsert(
    insert: InsertOf, table: Table, keys: list[str], set_: Callable[[Any], dict[str, Any]]
) -> Upsert:
    """``table``'s INSERT of a whole row from parameters named as its columns, updating the row
    ``keys`` name by ``set_(excluded)`` instead when it exists."""
    stmt = insert(table).values({c.name: bindparam(c.name) for c in table.c})
    return stmt.on_conflict_do_update(index_elements=keys, set_=set_(stmt.excluded))


def _increment(insert: InsertOf, table: Table) -> Upsert:
    """Add a row's sums to the row its key names, creating the row if needed."""
    return _upsert(
        insert,
        table,
        [c.name for c in table.primary_key.columns],
        lambda excluded: {name: table.c[name] + excluded[name] for name in SUMS},
    )


class Statements:
    """The counting statements of one dialect, built once: SQLAlchemy then compiles each once,
    where a statement built per event costs a cache key (and an upsert its ``excluded``
    columns) every time. Each runs with parameters named as the columns it writes."""

    def __init__(self, insert: InsertOf) -> None:
        self.record = (
            insert(processed)
            .values(message_id=bindparam("message_id"), seen_at=bindparam("seen_at"))
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(processed.c.message_id)
        )
        ties = ["tenant", "correlation_id"]
        # A model call: the correlation's saga type, "" while no saga start has named it.
        self.seen = _upsert(
            insert, correlations, ties, lambda excluded: {"seen_at": excluded.seen_at}
        ).returning(correlations.c.saga_type)
        # A saga start: the first saga seen keeps the type.
        current = correlations.c.saga_type
        self.name = _upsert(
            insert,
            correlations,
            ties,
            lambda excluded: {
                "saga_type": case((current == "", excluded.saga_type), else_=current),
                "seen_at": excluded.seen_at,
            },
        ).returning(current)
        self.wait = _increment(insert, unattributed)
        self.add = _increment(insert, usage_daily)
        self.lock_saga = _upsert(
            insert, sagas, ["saga_id"], lambda excluded: {"seen_at": excluded.seen_at}
        ).returning(*sagas.c)


# By dialect name: the two databases Soma runs on.
_STATEMENTS = {"postgresql": Statements(postgresql.insert), "sqlite": Statements(sqlite.insert)}


def _statements(conn: Connection) -> Statements:
    return _STATEMENTS[conn.dialect.name]


# The model calls of one correlation waiting for its saga start, taken out to be counted.
_RELEASE = (
    delete(unattributed)
    .where(
        (unattributed.c.tenant == bindparam("_tenant"))
        & (unattributed.c.correlation_id == bindparam("_correlation_id"))
    )
    .returning(*unattributed.c)
)
_SAGA = sagas.c.saga_id == bindparam("_saga_id")
# A start after its run's end: the run's start.
_STARTED_LATE = update(sagas).where(_SAGA).values(started_at=bindparam("started_at"))
# A new run.
_RESTARTED = (
    update(sagas)
    .where(_SAGA)
    .values(
        started_at=bindparam("started_at"),
        finished_at=None,
        saga_type=bindparam("saga_type"),
        actor=bindparam("actor"),
    )
)
_FINISHED = (
    update(sagas)
    .where(_SAGA)
    .values(
        finished_at=bindparam("finished_at"),
        started_at=bindparam("started_at"),
        saga_type=bindparam("saga_type"),
        actor=bindparam("actor"),
    )
)


ROLLUP_KEY = tuple(c.name for c in usage_daily.primary_key.columns)

# Message ids recorded per statement: well under either database's limit of bound parameters.
IDS_PER_STATEMENT = 500


class Totals:
    """The rollup sums of one transaction, summed per row as its events are counted and added to
    the rows at its end (``write``): one upsert per row rather than per event. Nothing in the
    transaction reads the rollups, so adding later changes nothing but when."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, fact: Fact) -> None:
        values = asdict(fact)
        key = tuple(values[name] for name in ROLLUP_KEY)
        row = self._rows.get(key)
        if row is None:
            self._rows[key] = values
            return
        for name in SUMS:
            row[name] += values[name]

    def write(self, conn: Connection) -> None:
        # In key order, so that concurrent transactions lock shared rollup rows in the same order.
        if self._rows:
            conn.execute(_statements(conn).add, [self._rows[key] for key in sorted(self._rows)])
        self._rows.clear()


def _first_times(conn: Connection, envs: Iterable[Envelope]) -> set[str]:
    """Record the message ids of ``envs``; those not recorded before, that is the events to count.

    In id order, so that concurrent transactions holding some of the same ids (a batch delivered
    again to another replica) take them in the same order; and before any other row, so that a
    transaction waiting on another's id holds nothing the other may need.
    """
    ids = sorted({env.message_id for env in envs})
    now = time.time()
    record = _statements(conn).record
    fresh: set[str] = set()
    for i in range(0, len(ids), IDS_PER_STATEMENT):
        rows = [{"message_id": m, "seen_at": now} for m in ids[i : i + IDS_PER_STATEMENT]]
        fresh.update(conn.execute(record, rows).scalars())
    return fresh


def _count_model_call(conn: Connection, totals: Totals, fact: Fact, env: Envelope) -> None:
    """Count under the correlation's saga type, or wait unattributed until it is known."""
    statements = _statements(conn)
    tie = {"tenant": env.tenant, "correlation_id": env.correlation_id}
    saga_type = conn.execute(
        statements.seen, {**tie, "saga_type": "", "seen_at": time.time()}
    ).scalar_one()
    if saga_type:
        totals.add(replace(fact, saga_type=saga_type))
        return
    waiting = {k: v for k, v in asdict(fact).items() if k not in ("kind", "saga_type")}
    conn.execute(statements.wait, {**waiting, "correlation_id": env.correlation_id})


def _attribute(conn: Connection, totals: Totals, saga_type: str, env: Envelope) -> None:
    """Name the correlation's saga type (the first saga seen keeps it) and move its waiting
    model calls into the rollups under that type."""
    named = conn.execute(
        _statements(conn).name,
        {
            "tenant": env.tenant,
            "correlation_id": env.correlation_id,
            "saga_type": saga_type,
            "seen_at": time.time(),
        },
    ).scalar_one()
    moved = conn.execute(_RELEASE, {"_tenant": env.tenant, "_correlation_id": env.correlation_id})
    _release(totals, moved, named)


def _release(totals: Totals, moved: Iterable[Row[Any]], saga_type: str) -> None:
    """Count model calls taken out of waiting (``moved``) under ``saga_type``."""
    for row in moved:
        values = {k: v for k, v in row._mapping.items() if k != "correlation_id"}
        totals.add(Fact(kind=MODEL, saga_type=saga_type, **values))


def _model_completed(conn: Connection, totals: Totals, event: SlmCompleted, env: Envelope) -> None:
    """Count one completion."""
    fact = Fact(
        tenant=env.tenant,
        day=day_of(event_time(env)),
        kind=MODEL,
        model=event.model,
        actor=env.actor,
        key_id=event.key_id or "",
        prompt_tokens=event.usage.prompt_tokens,
        completion_tokens=event.usage.completion_tokens,
        cost_usd=event.cost_usd,
        latency_ms_sum=event.latency_ms,
        latency_count=1,
    )
    _count_model_call(conn, totals, fact, env)


def _model_failed(conn: Connection, totals: Totals, event: CommandFailed, env: Envelope) -> None:
    """Count a failed model call; the failure does not name its model, so it counts under ""."""
    fact = Fact(
        tenant=env.tenant, day=day_of(event_time(env)), kind=MODEL, actor=env.actor, errors=1
    )
    _count_model_call(conn, totals, fact, env)


def _lock_saga(conn: Connection, saga_id: str, saga_type: str, env: Envelope) -> Row[Any]:
    """The saga's row, created empty if new, and locked until commit (by the upsert itself,
    which returns the row as it stands after it)."""
    return conn.execute(
        _statements(conn).lock_saga,
        {
            "saga_id": saga_id,
            "tenant": env.tenant,
            "saga_type": saga_type,
            "actor": env.actor,
            "started_at": None,
            "finished_at": None,
            "seen_at": time.time(),
        },
    ).one()


def _duration(started: float, finished: float) -> float:
    return max(finished - started, 0.0) * 1000


def _saga_started(conn: Connection, totals: Totals, event: SagaStarted, env: Envelope) -> None:
    """Name the correlation's saga type and remember when the run started.

    A start after its run's end (seen first) adds the run's duration to the end's row. A saga
    id that ran before and finished starts a new run; a start of a running saga (asked again
    with ``use_existing``) changes nothing.
    """
    started = event_time(env)
    _attribute(conn, totals, event.saga_type, env)
    run = _lock_saga(conn, event.saga_id, event.saga_type, env)
    if run.started_at is not None and run.finished_at is None:
        return
    if run.started_at is None and run.finished_at is not None:
        totals.add(
            Fact(
                tenant=run.tenant,
                day=day_of(run.finished_at),
                kind=SAGA,
                saga_type=run.saga_type,
                actor=run.actor,
                requests=0,
                latency_ms_sum=_duration(started, run.finished_at),
                latency_count=1,
            ),
        )
        conn.execute(_STARTED_LATE, {"_saga_id": event.saga_id, "started_at": started})
        return
    conn.execute(
        _RESTARTED,
        {
            "_saga_id": event.saga_id,
            "started_at": started,
            "saga_type": event.saga_type,
            "actor": env.actor,
        },
    )


def _run(
    env: Envelope, saga_type: str, started: float | None, ended: float, *, failed: bool
) -> Fact:
    """One run ended at ``ended``, timed when its start is known."""
    return Fact(
        tenant=env.tenant,
        day=day_of(ended),
        kind=SAGA,
        saga_type=saga_type,
        actor=env.actor,
        errors=int(failed),
        latency_ms_sum=0.0 if started is None else _duration(started, ended),
        latency_count=int(started is not None),
    )


def _saga_finished(conn: Connection, totals: Totals, event: SagaFinished, env: Envelope) -> None:
    """Count one saga run, with its duration when its start was seen (or when it is)."""
    ended = event_time(env)
    run = _lock_saga(conn, event.saga_id, event.saga_type, env)
    timed = run.started_at is not None and run.finished_at is None
    started = run.started_at if timed else None
    totals.add(_run(env, event.saga_type, started, ended, failed=event.state in FAILED))
    conn.execute(
        _FINISHED,
        {
            "_saga_id": event.saga_id,
            "finished_at": ended,
            "started_at": started,
            "saga_type": event.saga_type,
            "actor": env.actor,
        },
    )


def _saga_refused(conn: Connection, totals: Totals, event: CommandFailed, env: Envelope) -> None:
    """Count a saga start the runner refused: a run that failed before it began."""
    totals.add(
        Fact(tenant=env.tenant, day=day_of(event_time(env)), kind=SAGA, actor=env.actor, errors=1),
    )


def _turn_finished(
    conn: Connection, totals: Totals, event: ChatTurnFinished, env: Envelope
) -> None:
    """Count one direct turn as a run of its turn type, from its end alone: the end carries its
    start, so there is no pair to wait for. Its model calls, counted before as waiting, move
    under the turn type; those that come after are counted under it at once."""
    _attribute(conn, totals, event.turn_type, env)
    failed = event.state == "failed"
    totals.add(_run(env, event.turn_type, event.started_at, event_time(env), failed=failed))


FOLLOWED = (
    "slm.completed",
    "slm.failed",
    "sagas.started",
    "sagas.finished",
    "sagas.failed",
    "gateway.turn_finished",
)

Counter = Callable[[Connection, Totals, Any, Envelope], None]


def _counter(name: str, event: Any) -> Counter | None:
    """How an event named ``name`` (one of ``FOLLOWED``) is counted; None when it does not count
    (a failure of another command)."""
    if name == "slm.completed":
        return _model_completed
    if name == "slm.failed":
        return _model_failed if event.command == "slm.complete" else None
    if name == "sagas.started":
        return _saga_started
    if name == "sagas.finished":
        return _saga_finished
    if name == "sagas.failed":
        return _saga_refused if event.command == "sagas.start" else None
    if name == "gateway.turn_finished":
        return _turn_finished
    raise ValueError(f"analytics does not count {name}")


def _count(conn: Connection, events: list[tuple[Counter, Any, Envelope]]) -> int:
    """Count ``events`` in the caller's transaction, in their order, each the first time its
    message id comes; how many were counted."""
    fresh = _first_times(conn, (env for _, _, env in events))
    totals = Totals()
    counted = 0
    for counter, event, env in events:
        if env.message_id in fresh:
            fresh.discard(env.message_id)
            counter(conn, totals, event, env)
            counted += 1
    totals.write(conn)
    return counted


def count(conn: Connection, events: Iterable[tuple[str, Any, Envelope]]) -> int:
    """Count events named by their schema names (each one of ``FOLLOWED``) in the caller's
    transaction; how many were counted, leaving out those counted before and those that do not
    count (a failure of another command)."""
    todo = []
    for name, event, env in events:
        counter = _counter(name, event)
        if counter is not None:
            todo.append((counter, event, env))
    return _count(conn, todo)


async def count_batch(engine: AsyncEngine, events: Iterable[tuple[str, Any, Envelope]]) -> int:
    """Count a batch of events in one transaction; how many were counted for the first time.

    Each event's id is recorded in the same transaction as its counts, so a batch delivered
    again after a crash (before its ack, after or before its commit) adds nothing twice: what
    committed is skipped by id, what did not is counted now. An event repeated within the batch
    is counted where it first comes.
    """
    batch = list(events)
    return await in_transaction(engine, lambda conn: count(conn, batch))


async def _alone(engine: AsyncEngine, counter: Counter, event: Any, env: Envelope) -> bool:
    return await in_transaction(engine, lambda conn: _count(conn, [(counter, event, env)]) == 1)


async def model_completed(engine: AsyncEngine, event: SlmCompleted, env: Envelope) -> bool:
    """Count one completion in its own transaction; False when it was already counted."""
    return await _alone(engine, _model_completed, event, env)


async def model_failed(engine: AsyncEngine, event: CommandFailed, env: Envelope) -> bool:
    """Count a failed model call in its own transaction."""
    return await _alone(engine, _model_failed, event, env)


async def saga_started(engine: AsyncEngine, event: SagaStarted, env: Envelope) -> bool:
    """Count a saga start in its own transaction."""
    return await _alone(engine, _saga_started, event, env)


async def saga_finished(engine: AsyncEngine, event: SagaFinished, env: Envelope) -> bool:
    """Count a saga end in its own transaction."""
    return await _alone(engine, _saga_finished, event, env)


async def saga_refused(engine: AsyncEngine, event: CommandFailed, env: Envelope) -> bool:
    """Count a refused saga start in its own transaction."""
    return await _alone(engine, _saga_refused, event, env)


async def prune(engine: AsyncEngine, before: float) -> int:
    """Forget what is only needed while a stream still holds the events: counted event ids,
    sagas and correlations not seen since ``before`` (epoch seconds). Model calls still waiting
    for a saga start of such a correlation are counted as outside any saga. Rollups stay.
    """
    c, u = correlations.c, unattributed.c

    def work(conn: Connection) -> int:
        ids = conn.execute(delete(processed).where(processed.c.seen_at < before))
        runs = conn.execute(delete(sagas).where(sagas.c.seen_at < before))
        stale = exists().where(
            c.tenant == u.tenant, c.correlation_id == u.correlation_id, c.seen_at < before
        )
        totals = Totals()
        moved = conn.execute(delete(unattributed).where(stale).returning(*unattributed.c))
        _release(totals, moved, "")
        totals.write(conn)
        ties = conn.execute(delete(correlations).where(c.seen_at < before))
        return int(ids.rowcount) + int(runs.rowcount) + int(ties.rowcount)

    return await in_transaction(engine, work)
