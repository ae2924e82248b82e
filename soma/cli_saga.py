"""``soma saga``: list, inspect, start, signal, cancel, terminate and retry sagas.

Listing and inspecting read the saga store directly (read-only, no locks), so they work even when
no runner is up; start, signal, cancel, terminate and retry are commands on the bus that a runner
carries out.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import typer

from schemas.sagas import IdConflict, IdReuse
from soma import terminal

app = typer.Typer(
    help="""Sagas: durable multi-step work (chat turns, agent tasks), like Temporal workflows.

A saga is a state machine persisted in SQL; every step is one transaction, so a saga survives
the crash of any process. Operators list and inspect instances, start new ones, send signals
(a human approval), cancel (compensations run in reverse order), terminate (end at once, no
compensation) and retry a failed one from where it failed.

**States**: running, cancelling (compensations running); and the ends completed, failed,
cancelled, compensated, compensation_failed, terminated.

**Examples**

    soma saga ls --state running
    soma saga ls --type agent_task --since 1h --json
    soma saga ls --query 'state = "failed" AND started_at > "2026-11-01"'
    soma saga show 6f1c…
    soma saga start agent_task '{"goal": "Compare JetStream and Kafka", "require_approval": true}'
    soma saga signal 6f1c… approve '{"approved": true, "by": "alice"}'
    soma saga cancel 6f1c… --reason "no longer needed"
    soma saga terminate 6f1c… --reason "runaway loop"
    soma saga retry 6f1c…

**Exit status**: 0 done; 1 refused or failed (an ended saga, a runner that does not answer);
2 a usage error (a malformed `--query`, an unknown state).

**Environment**

* `DATABASE_URL` — the saga store (default: the SQLite file under `SOMA_DATA_DIR`)
* `NATS_URL` — for start, signal, cancel, terminate and retry
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
        None,
        help="running, cancelling, completed, failed, cancelled, compensated, "
        "compensation_failed, terminated.",
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
    query: str = typer.Option(
        None,
        "--query",
        "-q",
        help='A list filter, e.g. \'state = "failed" AND input.goal != ""\' (see above).',
    ),
) -> None:
    """List saga instances, newest first, with filters and paging.

    The table shows the first 12 characters of each id, which `show`, `signal`, `cancel`,
    `terminate` and `retry` accept as they are; `--wide` (or `-o wide`) shows whole ids,
    `-o json` everything.

    **--query** filters as Temporal's list filter does, in the database. A comparison is
    `FIELD OP VALUE` with OP one of `= != > >= < <=`, or `FIELD IN (VALUE, …)`; comparisons
    join with `AND` and `OR` (AND binds first) and group in parentheses. Fields: `id`, `type`,
    `state`, `tenant`, `step`, `parent_id`, `error_code`, `version`, `run`, `started_at`,
    `updated_at`, `finished_at`, and `input.KEY` (`input.a.b` for a nested key). Values:
    "text" in quotes, numbers, `true`, `false`, `null` (`finished_at = null`: not finished).
    Times take an ISO time, UTC unless it says otherwise ("2026-11-01",
    "2026-11-01T10:00:00Z"), or seconds since the epoch. `!=` also matches a saga where the
    field is not set. The other options still apply, joined with AND.

    **Examples**

        soma saga ls --query 'state = "failed" AND type = "agent_task"'
        soma saga ls --query 'started_at >= "2026-11-01" AND started_at < "2026-11-02"'
        soma saga ls --query '(state = "running" OR state = "cancelling") AND tenant = "acme"'
        soma saga ls --query 'input.require_approval = true AND input.goal != ""'
        soma saga ls --query 'state IN ("failed", "compensation_failed")' --since 1d

    A malformed query or an unknown field is a usage error (exit 2) that shows where."""
    from sagas import list_query, queries
    from schemas.sagas import SagaState

    if output not in ("table", "wide", "json"):
        terminal.fail(f"-o {output!r}: choose from table, wide, json", terminal.USAGE)
    if state is not None and state not in set(SagaState):
        terminal.fail(f"--state {state!r}: choose from {', '.join(SagaState)}", terminal.USAGE)
    where = None
    if query is not None:
        try:
            where = list_query.parse(query)
        except list_query.QueryError as exc:
            terminal.err.print(f"{exc.query}\n{' ' * exc.position}^", markup=False)
            terminal.fail(f"--query {exc}", terminal.USAGE)

    rows = terminal.run(
        _with_db(
            lambda db: queries.list_instances(
                db,
                tenant=tenant,
                saga_type=saga_type,
                state=state,
                since=_since(since),
                where=where,
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


async def _with_tool_specs(requester: Any, cmd: Any, tenant: str) -> Any:
    """``cmd`` with the tools an agent task or a run names by name replaced by the registry's
    full specs, resolved as the gateway resolves them; an unknown name fails, listing the
    registry's tools."""
    import msgspec

    from gateway.tool_names import UnknownTool, run_tools, task_tools
    from schemas.tools import ToolsList

    resolve = {"agent_task": task_tools, "agent_run": run_tools}.get(cmd.saga_type)
    if resolve is None or not isinstance(cmd.input, dict):
        return cmd

    async def registry() -> dict[str, Any]:
        try:
            _, reply = await requester.request(
                ToolsList(role=None),
                tenant=tenant,
                expect={"tools.listed"},
                actor="operator",
                timeout=30,
            )
        except TimeoutError as exc:
            terminal.fail(f"{exc}; tools are named by name, so the tools process must be up")
        if reply.schema != "tools.listed":
            terminal.fail(f"the tool registry could not be read: {reply.payload.error}")
        return {tool.name: tool for tool in reply.payload.tools}

    try:
        return msgspec.structs.replace(cmd, input=await resolve(cmd.input, registry))
    except UnknownTool as exc:
        terminal.fail(f"{exc.param}: {exc}", code=terminal.USAGE)


async def _start_on(requester: Any, cmd: Any, tenant: str, sid: str) -> None:
    """Send a saga's start and return once the runner has stored it (so ``show`` finds it at
    once), or fail with the runner's refusal."""
    cmd = await _with_tool_specs(requester, cmd, tenant)
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
    from bus.service import Connected

    async with terminal.bus(terminal.settings()) as (nc, js):
        env = envelope_for(message, tenant=tenant, actor="operator", correlation_id=correlation_id)
        await publish(Connected(nc, js), message, env)
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


def _operate(
    saga_id: str, message: Callable[[str], Any], expect: str, done: str, timeout: float
) -> tuple[str, Any]:
    """Send the saga named by ``saga_id`` (or a prefix) ``message(its full id)`` and return
    its full id and the runner's ``expect`` event; its refusal fails the command."""

    async def go() -> tuple[str, Any]:
        row = await _resolve(saga_id)
        return row["id"], await _command(message(row["id"]), row, expect, timeout)

    found, answer = terminal.run(go())
    if answer.schema != expect:
        terminal.fail(f"not {done}: {answer.payload.error}")
    return found, answer


async def _command(message: Any, row: dict[str, Any], expect: str, timeout: float) -> Any:
    """Send ``message`` about the saga ``row`` and return the runner's answer to it: the event
    ``expect`` (for this saga), or its refusal (``sagas.failed``)."""
    from bus.publish import envelope_for, publish
    from bus.request import Requester

    async with terminal.bus(terminal.settings()) as (nc, js):
        requester = Requester(nc, js)
        await requester.start()
        env = envelope_for(
            message,
            tenant=str(row["tenant"]),
            actor="operator",
            correlation_id=str(row["correlation_id"]),
        )
        try:
            # A saga's events carry its correlation id: watch it before sending.
            async with requester.watching(env.correlation_id) as events:
                await publish(requester.bus, message, env)
                async with asyncio.timeout(timeout):
                    while True:
                        event = await events.get()
                        if event.envelope.causation_id != env.message_id:
                            continue
                        if event.schema.endswith(".failed"):
                            return event
                        if event.schema == expect and event.payload.saga_id == row["id"]:
                            return event
        except TimeoutError:
            terminal.fail(
                f"no answer from the saga runner within {timeout:.0f}s; is it up? "
                f"(`soma status`); `soma saga show {row['id']}` shows where the saga is"
            )
        finally:
            await requester.close()


@app.command("terminate")
def terminate(
    saga_id: str = typer.Argument(..., help="The saga id, or a prefix only it starts with."),
    reason: str = typer.Option("", help="Why; kept in the saga's history and error."),
    timeout: float = typer.Option(30, help="Seconds to wait for the runner's answer."),
) -> None:
    """Terminate a saga: end it now, as it stands, without running its compensations.

    Unlike `cancel`, nothing is undone: what its completed steps did stays done, a call in
    flight is no longer waited for (its reply is dropped), and the saga ends in state
    `terminated` at once, with `sagas.finished` published as for any end (a parent waiting
    on it goes on). Its child sagas that are still running are terminated too, as Temporal
    does with the parent close policy TERMINATE. Use it for a saga that must stop now: one
    stuck, looping or doing harm; use `cancel` to undo its work instead.

    A running or cancelling saga can be terminated (a cancelling one stops its remaining
    compensations). One that has already ended is refused: exit 1, naming the state it
    ended in.

    **Examples**

        soma saga terminate 6f1c… --reason "runaway loop"
        soma saga ls --query 'state = "running" AND started_at < "2026-11-01"' -o wide
    """
    from schemas.sagas import SagaTerminate

    def message(found: str) -> Any:
        return SagaTerminate(saga_id=found, reason=reason)

    found, _ = _operate(saga_id, message, "sagas.finished", "terminated", timeout)
    terminal.note(f"saga {found} terminated")


@app.command("retry")
def retry(
    saga_id: str = typer.Argument(..., help="The saga id, or a prefix only it starts with."),
    reason: str = typer.Option("", help="Why; kept in the saga's history."),
    timeout: float = typer.Option(30, help="Seconds to wait for the runner's answer."),
) -> None:
    """Retry a failed saga from where it failed, keeping what it did before.

    A saga that failed on a call (a command refused, or out of attempts, or past its
    deadline) sends that call again, its attempts counted from one and its deadline from
    now; calls sent with it that had no reply yet are sent again too. A saga that failed in a
    step (the step raised, returned Fail, or is missing) runs that step again on the data
    and the reply it had before it: deploy the fix first, then retry. A saga whose signal
    wait timed out waits for the signal again. Its state is running again and its history
    goes on, marked `retried`, as its next run (`show` prints the run).

    Only a `failed` saga can be retried: any other state is refused (exit 1) with the reason.
    One whose compensations have run (`compensated`, `compensation_failed`) has had its
    steps undone, so it cannot go on from where it stopped: start it again instead
    (`soma saga start TYPE JSON --id ID --reuse allow_duplicate_failed_only`). A chat turn
    cannot be retried (its caller has gone). A retried child saga runs on its own: its parent
    has already gone on with its failed outcome and does not hear of its new end.

    **Examples**

        soma saga retry 6f1c…
        soma saga ls --query 'state = "failed" AND error_code = "unavailable"' -o wide
    """
    from schemas.sagas import SagaRetry

    def message(found: str) -> Any:
        return SagaRetry(saga_id=found, reason=reason)

    found, answer = _operate(saga_id, message, "sagas.retried", "retried", timeout)
    terminal.note(
        f"saga {found} runs again from step {answer.payload.step or '-'} "
        f"(run {answer.payload.run}); `soma saga show {found}` follows it"
    )
