"""``soma saga``: list, inspect, start, signal and cancel sagas.

Listing and inspecting read the saga store directly (read-only, no locks), so they work even when
no runner is up; start, signal and cancel are commands on the bus that a runner carries out.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import typer

from schemas.sagas import IdConflict, IdReuse
from soma import terminal

app = typer.Typer(
    help="""Sagas: durable multi-step work (chat turns, agent tasks), like Temporal workflows.

A saga is a state machine persisted in SQL; every step is one transaction, so a saga survives
the crash of any process. Operators list and inspect instances, start new ones, send signals
(a human approval) and cancel (compensations run in reverse order).

**Examples**

    soma saga ls --state running
    soma saga ls --type agent_task --since 1h --json
    soma saga show 6f1c…
    soma saga start agent_task '{"goal": "Compare JetStream and Kafka", "require_approval": true}'
    soma saga signal 6f1c… approve '{"approved": true, "by": "alice"}'
    soma saga cancel 6f1c… --reason "no longer needed"

**Environment**

* `DATABASE_URL` — the saga store (default: the SQLite file under `SOMA_DATA_DIR`)
* `NATS_URL` — for start, signal and cancel
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(value: str | None) -> float | None:
    if not value:
        return None
    m = _DURATION.match(value)
    if m:
        return (
            time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        )
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except ValueError:
        terminal.fail(
            f"--since {value!r}: use a duration (30s, 10m, 2h, 7d) or an ISO time", terminal.USAGE
        )


_SHOWN = ("kind", "name", "then", "attempt", "child_id")


def _public(data: dict[str, Any]) -> dict[str, Any]:
    """A saga's data without the engine's own bookkeeping (keys starting with ``_``)."""
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _json_payload(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        terminal.fail(f"{what} is not valid JSON: {exc}", terminal.USAGE)
    if not isinstance(value, dict):
        terminal.fail(f"{what} must be a JSON object", terminal.USAGE)
    return value


async def _with_db(fn: Any) -> Any:
    from kernel.db import make_engine

    settings = terminal.settings()
    db = make_engine(settings.resolved_database_url("sagas"))
    try:
        return await fn(db)
    except Exception as exc:
        if "no such table" in str(exc) or "does not exist" in str(exc):
            terminal.fail("the saga store has no tables yet; run `soma migrate` (or `soma up`)")
        raise
    finally:
        await db.dispose()


# How much of an id the table shows: enough to be unique in practice, and accepted as a prefix.
ID_SHOWN = 12


@app.command("ls")
def ls(
    saga_type: str = typer.Option(
        None, "--type", help="Only this saga type (chat_turn, agent_task, …)."
    ),
    state: str = typer.Option(
        None, help="running, cancelling, completed, failed, cancelled, compensated, "
        "compensation_failed."
    ),
    tenant: str = typer.Option(None, help="Only this tenant."),
    since: str = typer.Option(
        None, help="Started within a duration (10m, 2h) or after an ISO time."
    ),
    limit: int = typer.Option(50, help="Page size."),
    offset: int = typer.Option(0, help="Skip this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
    output: str = typer.Option("table", "--output", "-o", help="table, wide or json."),
    wide: bool = typer.Option(False, "--wide", help="Full ids in the table (as -o wide)."),
) -> None:
    """List saga instances, newest first, with filters and paging.

    The table shows the first 12 characters of each id, which `show`, `signal` and `cancel`
    accept as they are; `--wide` (or `-o wide`) shows whole ids, `-o json` everything."""
    from sagas import queries
    from schemas.sagas import SagaState

    if output not in ("table", "wide", "json"):
        terminal.fail(f"-o {output!r}: choose from table, wide, json", terminal.USAGE)
    if state is not None and state not in set(SagaState):
        terminal.fail(
            f"--state {state!r}: choose from {', '.join(SagaState)}", terminal.USAGE
        )

    rows = terminal.run(
        _with_db(
            lambda db: queries.list_instances(
                db,
                tenant=tenant,
                saga_type=saga_type,
                state=state,
                since=_since(since),
                limit=limit,
                offset=offset,
            )
        )
    )
    if as_json or output == "json":
        for r in rows:
            print(json.dumps(r, default=str))
        return
    from rich.table import Table

    whole = wide or output == "wide"
    table = Table(box=None, header_style="bold")
    for col in ("id", "type", "v", "tenant", "state", "step", "started", "took"):
        table.add_column(col, no_wrap=col == "id")
    for r in rows:
        took = f"{(r['finished_at'] - r['created_at']) * 1000:.0f} ms" if r["finished_at"] else "-"
        table.add_row(
            r["id"] if whole else r["id"][:ID_SHOWN],
            r["type"],
            str(r["version"]),
            r["tenant"],
            r["state"],
            r["step"] or "-",
            _time(r["created_at"]),
            took,
        )
    terminal.out.print(table)
    if not rows:
        terminal.note("no sagas match")


@app.command("show")
def show(
    saga_id: str = typer.Argument(..., help="The saga id, or a prefix only it starts with."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object: instance and history."),
) -> None:
    """Show one saga: state, input, data, result or error, and its step history with timings."""
    from sagas import queries

    async def load() -> tuple[Any, Any]:
        row = await _resolve(saga_id)

        async def history_of(db: Any) -> Any:
            return await queries.get_history(db, row["id"])

        return row, await _with_db(history_of)

    row, history = terminal.run(load())
    if row is None:
        terminal.fail(f"no saga {saga_id}; `soma saga ls` lists them")
    if as_json:
        print(json.dumps({"saga": row, "history": history}, default=str))
        return
    out = terminal.out
    out.print(
        f"[bold]{row['id']}[/]  {row['type']} v{row['version']} (run {row['run']})  "
        f"tenant {row['tenant']}"
    )
    out.print(f"state    {row['state']}   step {row['step'] or '-'}")
    out.print(
        f"started  {_time(row['created_at'])}   updated {_time(row['updated_at'])}   "
        f"finished {_time(row['finished_at'])}"
    )
    if row["waiting"]:
        out.print(
            f"waiting  {json.dumps({k: v for k, v in row['waiting'].items() if k in _SHOWN})}"
        )
    if row["parent_id"]:
        out.print(f"parent   {row['parent_id']}")
    out.print(f"input    {json.dumps(row['input'])[:500]}", markup=False)
    out.print(
        f"data     {json.dumps(_public(row['data']))[:500]}",
        markup=False,
    )
    if row["result"] is not None:
        out.print(f"result   {json.dumps(row['result'])[:1000]}", markup=False)
    if row["error"]:
        out.print(f"error    {row['error']}", markup=False)
    from rich.table import Table

    table = Table(box=None, header_style="bold", title="history")
    for col in ("#", "time", "step", "event", "ms", "detail"):
        table.add_column(col)
    for h in history:
        ms = f"{h['duration_ms']:.1f}" if h["duration_ms"] is not None else ""
        table.add_row(
            str(h["seq"]),
            _time(h["at"]),
            h["step"] or "",
            h["event"],
            ms,
            json.dumps(h["detail"])[:80] if h["detail"] else "",
        )
    out.print(table)


async def _resolve(saga_id: str) -> dict[str, Any]:
    """The saga ``saga_id`` names: its whole id or a prefix only it starts with. None found, or
    a prefix several start with, is an error that says what to type instead."""
    from sagas import queries

    async def find(db: Any) -> tuple[Any, list[str]]:
        row = await queries.get_instance(db, saga_id)
        if row is not None:
            return row, [saga_id]
        matches = await queries.ids_starting_with(db, saga_id)
        if len(matches) == 1:
            return await queries.get_instance(db, matches[0]), matches
        return None, matches

    row, matches = await _with_db(find)
    if row is None and len(matches) > 1:
        terminal.fail(
            f"{saga_id!r} starts {len(matches)}+ saga ids ({', '.join(matches[:3])}, …); "
            "type more of it",
            terminal.USAGE,
        )
    if row is None:
        terminal.fail(f"no saga {saga_id}; `soma saga ls` lists them")
    return dict(row)


def _still_running(row: dict[str, Any], action: str) -> None:
    """A signal or cancel for a saga that has ended would be dropped: say so and exit 1."""
    from schemas.sagas import ENDED

    if row["state"] in ENDED:
        terminal.fail(f"saga {row['id']} has already ended ({row['state']}); nothing to {action}")


async def _start_on(requester: Any, cmd: Any, tenant: str, sid: str) -> None:
    """Send a saga's start and return once the runner has stored it (so ``show`` finds it at
    once), or fail with the runner's refusal."""
    try:
        _, reply = await requester.request(
            cmd,
            tenant=tenant,
            expect={"sagas.started"},
            correlation_id=sid,
            actor="operator",
            timeout=30,
        )
    except TimeoutError as exc:
        terminal.fail(f"{exc}; is the saga runner up? (`soma status`)")
    if reply.schema != "sagas.started":
        terminal.fail(f"not started: {reply.payload.error}")


async def _send(message: Any, tenant: str, correlation_id: str | None = None) -> str:
    from bus.publish import envelope_for, publish

    async with terminal.bus(terminal.settings()) as (_, js):
        env = envelope_for(message, tenant=tenant, actor="operator", correlation_id=correlation_id)
        await publish(js, message, env)
        return env.message_id


@app.command("start")
def start(
    saga_type: str = typer.Argument(
        ..., help="chat_turn, agent_task, or a type your runner registers."
    ),
    input_json: str = typer.Argument(
        None, metavar="[JSON]", help="The saga's input as a JSON object."
    ),
    saga_id: str = typer.Option(
        None, "--id", help="Saga id (default: a new one). Start is idempotent by id."
    ),
    tenant: str = typer.Option("default", help="Tenant the saga runs for."),
    reuse: IdReuse = typer.Option(IdReuse.REJECT_DUPLICATE, help="If the id has ended."),
    conflict: IdConflict = typer.Option(IdConflict.FAIL, help="If the id is running."),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for the saga to finish and print its outcome."
    ),
    timeout: float = typer.Option(300, help="Seconds to wait with --wait."),
) -> None:
    """Start a saga through the bus (a runner must be up) and print its id."""
    from bus.request import Requester
    from schemas.envelope import new_id
    from schemas.sagas import ENDED, SagaQuery, SagaStart

    sid = saga_id or new_id()
    cmd = SagaStart(
        saga_type=saga_type,
        saga_id=sid,
        input=_json_payload(input_json, "the input"),
        id_reuse=reuse,
        id_conflict=conflict,
    )

    async def go() -> int:
        async with terminal.bus(terminal.settings()) as (nc, js):
            requester = Requester(nc, js)
            await requester.start()
            await _start_on(requester, cmd, tenant, sid)
            print(sid)
            if not wait:
                return 0
            terminal.note(f"waiting for {sid} to finish …")
            async with requester.watching(sid) as events:
                # A quick saga can finish before its start is acknowledged, its sagas.finished
                # gone by: ask for its state once the watch is on, then wait if it runs.
                _, known = await requester.request(
                    SagaQuery(saga_id=sid), tenant=tenant, expect={"sagas.queried"}, timeout=30
                )
                saga = getattr(known.payload, "saga", None)
                if saga is not None and saga.state in ENDED:
                    return _outcome(saga.state, saga.result, saga.error)
                async with asyncio.timeout(timeout):
                    while True:
                        event = await events.get()
                        if event.schema == "sagas.finished" and event.payload.saga_id == sid:
                            p = event.payload
                            return _outcome(p.state, p.result, p.error)
        return 0

    sys.exit(terminal.run(go()))


def _outcome(state: str, result: Any, error: str | None) -> int:
    print(json.dumps({"state": state, "result": result, "error": error}))
    return 0 if state == "completed" else 1


@app.command("signal")
def signal(
    saga_id: str = typer.Argument(..., help="The saga id, or a prefix only it starts with."),
    name: str = typer.Argument(..., help="Signal name the saga waits for (e.g. approve)."),
    payload: str = typer.Argument(None, metavar="[JSON]", help="Signal payload as a JSON object."),
    tenant: str = typer.Option(None, help="Tenant (default: looked up in the saga store)."),
) -> None:
    """Send a signal to one saga; one sent before the saga waits for it is kept until it does.

    A saga that has ended is an error (exit 1); so is, for an agent task, a signal it never
    waits for (exit 2, naming the ones it does)."""
    from schemas.sagas import SagaSignal
    from schemas.tasks import AGENT_TASK_SIGNALS

    body = _json_payload(payload, "the payload")

    async def go() -> tuple[str, str]:
        row = await _resolve(saga_id)
        _still_running(row, "signal")
        if row["type"] == "agent_task" and name not in AGENT_TASK_SIGNALS:
            terminal.fail(
                f"an agent task takes no signal {name!r}; choose from "
                f"{', '.join(AGENT_TASK_SIGNALS)}",
                terminal.USAGE,
            )
        found = row["id"]
        sent = await _send(
            SagaSignal(saga_id=found, name=name, payload=body), tenant or str(row["tenant"])
        )
        return found, sent

    found, message_id = terminal.run(go())
    terminal.note(f"signal {name} sent to {found} (message {message_id})")


@app.command("cancel")
def cancel(
    saga_id: str = typer.Argument(..., help="The saga id, or a prefix only it starts with."),
    reason: str = typer.Option("", help="Why; kept in the saga's history."),
    tenant: str = typer.Option(None, help="Tenant (default: looked up in the saga store)."),
) -> None:
    """Cancel a saga: compensations of its completed steps run in reverse order. A saga that
    has ended is an error (exit 1)."""
    from schemas.sagas import SagaCancel

    async def go() -> tuple[str, str]:
        row = await _resolve(saga_id)
        _still_running(row, "cancel")
        found = row["id"]
        sent = await _send(SagaCancel(saga_id=found, reason=reason), tenant or str(row["tenant"]))
        return found, sent

    found, message_id = terminal.run(go())
    terminal.note(
        f"cancel sent to {found} (message {message_id}); `soma saga show {found}` follows it"
    )
