"""What the system did for a scenario's load, read back from its own records.

Nothing here trusts a process's word: saga instances come from the saga tables, memory writes
from the memory handler's turn history, model usage from the ``slm.completed`` events in
SOMA_EVT (by correlation id, which is the chat turn's saga id) and from the analytics rollups,
dead letters from SOMA_DLQ, consumer backlogs from the server.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.analytics.tables import MODEL, unattributed, usage_daily
from handlers.memory.turns import memory_turns
from sagas import tables as saga_tables
from schemas.catalogue import STREAMS
from schemas.envelope import CORRELATION_ID, SCHEMA
from tests.faults.load import Load

T = TypeVar("T")

SETTLE_TIMEOUT = 90.0


@dataclass
class Event:
    seq: int
    schema: str
    correlation: str
    body: bytes


async def last_event_seq(js: JetStreamContext) -> int:
    return int((await js.stream_info(STREAMS["evt"])).state.last_seq)


async def events_after(js: JetStreamContext, seq: int) -> list[Event]:
    """Every event stored after ``seq``, through an ordered consumer that takes nobody's work."""
    last = await last_event_seq(js)
    if last <= seq:
        return []
    sub = await js.subscribe(
        "soma.evt.>",
        ordered_consumer=True,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq + 1
        ),
    )
    found: list[Event] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            headers = msg.headers or {}
            stream_seq = msg.metadata.sequence.stream
            found.append(
                Event(
                    stream_seq, headers.get(SCHEMA, ""), headers.get(CORRELATION_ID, ""), msg.data
                )
            )
            if stream_seq >= last:
                return found
    finally:
        await sub.unsubscribe()


async def answered(ask: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """What a JetStream API request answers, asked again while it times out: after a cluster
    member's kill the members elect their leaders again, and until they have, a request can
    go unanswered. Past ``timeout`` the last timeout is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await ask()
        except NatsTimeoutError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def dead_letters(js: JetStreamContext) -> int:
    info = await answered(lambda: js.stream_info(STREAMS["dlq"]))
    return int(info.state.messages)


async def backlog(js: JetStreamContext) -> dict[str, int]:
    """Messages each durable consumer has yet to see or to acknowledge."""
    out: dict[str, int] = {}
    for stream in (STREAMS["cmd"], STREAMS["evt"]):
        for info in await answered(functools.partial(js.consumers_info, stream)):
            if not info.config.durable_name:
                continue
            left = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            if left:
                out[info.config.durable_name] = left
    return out


async def unfinished_sagas(db: AsyncEngine) -> list[dict[str, Any]]:
    i = saga_tables.instances
    async with db.connect() as conn:
        rows = await conn.execute(
            select(i.c.id, i.c.type, i.c.state, i.c.step, i.c.waiting).where(
                i.c.finished_at.is_(None)
            )
        )
        return [dict(r) for r in rows.mappings()]


async def unpublished_outbox(db: AsyncEngine) -> int:
    o = saga_tables.outbox
    async with db.connect() as conn:
        found = await conn.scalar(
            select(func.count()).select_from(o).where(o.c.published_at.is_(None))
        )
        return int(found or 0)


async def model_requests(db: AsyncEngine) -> int:
    """Model calls analytics has counted, attributed to a saga type or still waiting to be."""
    async with db.connect() as conn:
        attributed = await conn.scalar(
            select(func.coalesce(func.sum(usage_daily.c.requests), 0)).where(
                usage_daily.c.kind == MODEL
            )
        )
        waiting = await conn.scalar(select(func.coalesce(func.sum(unattributed.c.requests), 0)))
    return int(attributed or 0) + int(waiting or 0)


async def settle(js: JetStreamContext, db: AsyncEngine, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the system has nothing left to do: every saga ended, the outbox published,
    every consumer caught up. Returns the seconds it took; gives up (and lets the ledger show
    what is stuck) after ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        try:
            idle = (
                not await unfinished_sagas(db)
                and not await unpublished_outbox(db)
                and not await backlog(js)
            )
        except Exception:  # a database or server coming back from a crash
            idle = False
        if idle:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - began


@dataclass
class Figures:
    """One scenario in numbers; ``problems`` lists every broken promise, empty when all held."""

    scenario: str
    turns_sent: int = 0
    turns_answered: int = 0
    in_flight_at_fault: int = 0
    tasks: int = 0
    tasks_completed: int = 0
    memory_writes: int = 0
    usage_records: int = 0
    analytics_model_calls: int = 0
    model_completions: int = 0
    stuck: int = 0
    dead_letters: int = 0
    retried_requests: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"[faults] {self.scenario}: turns {self.turns_answered}/{self.turns_sent} answered "
            f"({self.in_flight_at_fault} in flight at the fault), "
            f"tasks {self.tasks_completed}/{self.tasks} completed, "
            f"memory writes {self.memory_writes}, usage records {self.usage_records} "
            f"(analytics {self.analytics_model_calls}/{self.model_completions} model calls), "
            f"stuck {self.stuck}, dead letters {self.dead_letters}, "
            f"retried requests {self.retried_requests}, {self.seconds:.1f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _marker_of(saga_input: dict[str, Any], load: Load) -> str | None:
    for message in saga_input.get("messages") or []:
        text = message.get("content") or ""
        prefix = "Drill "
        if isinstance(text, str) and text.startswith(prefix) and ":" in text:
            marker = text[len(prefix) : text.index(":")]
            if marker.startswith(f"fault-{load.scenario}-"):
                return marker
    return None


async def account(
    load: Load,
    js: JetStreamContext,
    db: AsyncEngine,
    *,
    first_event: int,
    model_requests_before: int,
) -> Figures:
    """Count, per turn the client sent, the sagas, memory writes and usage records it caused."""
    figures = Figures(load.scenario)
    figures.turns_sent = len(load.turns)
    figures.turns_answered = sum(t.answered for t in load.turns)
    figures.in_flight_at_fault = load.in_flight_at_fault
    figures.retried_requests = sum(t.attempts > 1 for t in load.turns)
    for turn in load.turns:
        if not turn.answered:
            figures.problems.append(
                f"lost: {turn.marker} unanswered after {turn.attempts} attempts "
                f"({turn.status}; {', '.join(turn.errors[-3:])})"
            )

    figures.tasks = len(load.tasks)
    figures.tasks_completed = sum(t.state == "completed" for t in load.tasks)
    for task in load.tasks:
        if task.state != "completed":
            figures.problems.append(
                f"task {task.task_id} ended {task.state} ({', '.join(task.errors[-3:])})"
            )
        elif task.notes != task.plan_steps or not task.plan_steps:
            figures.problems.append(
                f"task {task.task_id} kept {task.notes} notes for {task.plan_steps} steps"
            )

    i = saga_tables.instances
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                select(i.c.id, i.c.input, i.c.state, i.c.result).where(
                    i.c.type == "chat_turn", i.c.created_at >= load.started_at - 5
                )
            )
        ).mappings()
        sagas_of: dict[str, list[str]] = {}
        answers: dict[str, str] = {}
        for row in rows:
            marker = _marker_of(row["input"], load)
            if marker is not None:
                sagas_of.setdefault(marker, []).append(row["id"])
                message = (row["result"] or {}).get("message") or {}
                answers[row["id"]] = message.get("content") or ""
        turn_ids = [s for ids in sagas_of.values() for s in ids]
        written = Counter[str]()
        if turn_ids:
            found = await conn.execute(
                select(memory_turns.c.turn_id).where(memory_turns.c.turn_id.in_(turn_ids))
            )
            written.update(r[0] for r in found)

    events = await events_after(js, first_event)
    completions = [e for e in events if e.schema == "slm.completed"]
    slm_failures = [
        e
        for e in events
        if e.schema == "slm.failed" and msgspec.json.decode(e.body).get("command") == "slm.complete"
    ]
    usage = Counter(e.correlation for e in completions)
    figures.model_completions = len(completions) + len(slm_failures)
    figures.analytics_model_calls = await model_requests(db) - model_requests_before
    if figures.analytics_model_calls != figures.model_completions:
        figures.problems.append(
            f"analytics counted {figures.analytics_model_calls} model calls, the event trail "
            f"holds {figures.model_completions}"
        )

    for turn in load.turns:
        ids = sagas_of.get(turn.marker, [])
        writes = sum(written[s] for s in ids)
        used = sum(usage[s] for s in ids)
        figures.memory_writes += writes
        figures.usage_records += used
        if len(ids) != 1:
            figures.problems.append(f"{turn.marker} ran as {len(ids)} chat turns: {ids}")
        if writes != 1:
            figures.problems.append(f"{turn.marker} was written to memory {writes} times")
        if used != 1:
            figures.problems.append(f"{turn.marker} has {used} model usage records")
        if turn.answered and ids and turn.saga_id not in ids:
            figures.problems.append(f"{turn.marker} answered from another saga {turn.saga_id}")
        elif turn.answered and turn.text != answers.get(turn.saga_id or ""):
            how = "streamed" if turn.streamed else "returned"
            figures.problems.append(
                f"{turn.marker} {how} {len(turn.text)} characters that are not its answer "
                f"({len(answers.get(turn.saga_id or '', ''))} characters): {turn.text[:160]!r}"
            )

    for task in load.tasks:
        # A plan, one call per step, a report: any other count is a lost or a repeated call.
        used = usage[task.task_id]
        figures.usage_records += used
        if task.state == "completed" and used != task.plan_steps + 2:
            figures.problems.append(
                f"task {task.task_id} has {used} model usage records for "
                f"{task.plan_steps + 2} model calls"
            )

    stuck = await unfinished_sagas(db)
    figures.stuck = len(stuck)
    for saga in stuck[:5]:
        figures.problems.append(
            f"stuck saga {saga['id']} ({saga['type']}, {saga['state']}) at {saga['step']}, "
            f"waiting {saga['waiting']}"
        )
    figures.dead_letters = await dead_letters(js)
    if figures.dead_letters:
        figures.problems.append(f"{figures.dead_letters} dead letters in {STREAMS['dlq']}")
    left = await backlog(js)
    if left:
        figures.problems.append(f"consumers still behind: {left}")
    return figures
