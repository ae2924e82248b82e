"""``soma runs``: multi-agent runs for operators — start one from a file, list, inspect each
step, approve or reject a gate, cancel.

Listing and inspecting read the saga store directly (read-only), like ``soma saga``; start,
approve, reject and cancel are commands on the bus that a runner carries out. A run is an
``agent_run`` saga, so ``soma saga show <id>`` shows its raw state and history too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from soma import terminal
from soma.cli_saga import _send, _start_on, _time, _with_db

app = typer.Typer(
    help="""Multi-agent runs: several agents toward one goal, step by step (the `agent_run` saga).

A run definition names its agents (role, model, tool allow-list, memory) and a plan of steps,
each one agent's task after the steps it needs. Each step runs as an agent task of its own;
a gated step waits for a person to approve it.

**Examples**

    soma runs start newsroom.yaml --tenant acme --role member
    soma runs ls --state running
    soma runs show 6f1c…
    soma runs approve 6f1c… --comment "drafts look right"
    soma runs reject 6f1c… --comment "the drafts miss the brief"
    soma runs cancel 6f1c… --reason "not needed"

**Environment**

* `DATABASE_URL` — the saga store (default: the SQLite file under `SOMA_DATA_DIR`)
* `NATS_URL` — for start, approve, reject and cancel
""",
    rich_markup_mode="markdown",
    no_args_is_help=True,
)

SAGA_TYPE = "agent_run"


async def _run_row(run_id: str) -> dict[str, Any]:
    from sagas import queries

    async def load(db: Any) -> Any:
        return await queries.get_instance(db, run_id)

    row = await _with_db(load)
    if row is None or row["type"] != SAGA_TYPE:
        terminal.fail(f"no run {run_id}; `soma runs ls` lists them")
    return dict(row)


def _definition(path: Path) -> dict[str, Any]:
    import msgspec
    import yaml

    from schemas.runs import AgentRunInput

    try:
        text = path.read_text()
    except OSError as exc:
        terminal.fail(f"cannot read {path}: {exc}", terminal.USAGE)
    try:
        raw = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        terminal.fail(f"{path} is not valid YAML or JSON: {exc}", terminal.USAGE)
    if not isinstance(raw, dict):
        terminal.fail(f"{path} must hold a run definition (goal, agents, steps)", terminal.USAGE)
    try:
        msgspec.convert(raw, AgentRunInput)
    except msgspec.ValidationError as exc:
        terminal.fail(f"{path}: invalid run definition: {exc}", terminal.USAGE)
    return raw


@app.command("start")
def start(
    path: Path = typer.Argument(..., help="The run definition, a YAML or JSON file."),
    tenant: str = typer.Option("default", help="Tenant the run works for."),
    role: str = typer.Option(
        None, help="The role the agents act with (policy, tools, memory judge them by it)."
    ),
    user: str = typer.Option(None, help="The user the agents work for (their memory)."),
    run_id: str = typer.Option(None, "--id", help="Run id (default: a new one)."),
) -> None:
    """Start a run from a definition file (a runner must be up) and print its id."""
    from schemas.envelope import new_id
    from schemas.sagas import SagaStart

    raw = _definition(path)
    raw["role"] = role
    if user:
        raw["user"] = user
    sid = run_id or new_id()
    terminal.run(_started(SagaStart(saga_type=SAGA_TYPE, saga_id=sid, input=raw), tenant, sid))
    print(sid)


async def _started(cmd: Any, tenant: str, sid: str) -> None:
    from bus.request import Requester

    async with terminal.bus(terminal.settings()) as (nc, js):
        requester = Requester(nc, js)
        await requester.start()
        try:
            await _start_on(requester, cmd, tenant, sid)
        finally:
            await requester.close()


@app.command("ls")
def ls(
    state: str = typer.Option(None, help="running, completed, failed, compensated, …"),
    tenant: str = typer.Option(None, help="Only this tenant."),
    limit: int = typer.Option(50, help="Page size."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """List runs, newest first."""
    from sagas import queries

    rows = terminal.run(
        _with_db(
            lambda db: queries.list_instances(
                db, tenant=tenant, saga_type=SAGA_TYPE, state=state, limit=limit
            )
        )
    )
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("id", "tenant", "state", "step", "started", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["tenant"],
            r["state"],
            r["step"] or "-",
            _time(r["created_at"]),
            (r["error"] or "")[:60],
        )
    terminal.out.print(table)
    if not rows:
        terminal.note("no runs match")


@app.command("show")
def show(
    run_id: str = typer.Argument(..., help="The run id."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Show a run: its state, each step's state, task and output, the gate it waits at."""
    row = terminal.run(_run_row(run_id))
    data = row["data"] or {}
    steps = data.get("steps") or {
        s["id"]: {"id": s["id"], "agent": s["agent"], "state": "pending"}
        for s in row["input"].get("steps", [])
    }
    view = {
        "id": row["id"],
        "tenant": row["tenant"],
        "state": row["state"],
        "goal": row["input"].get("goal"),
        "gate": data.get("gate"),
        "steps": list(steps.values()),
        "usage": data.get("usage"),
        "cost_usd": data.get("cost_usd"),
        "report": (row["result"] or {}).get("report"),
        "error": row["error"],
    }
    if as_json:
        print(json.dumps(view, default=str))
        return
    out = terminal.out
    out.print(f"[bold]{row['id']}[/]  run  tenant {row['tenant']}  state {row['state']}")
    out.print(f"goal     {view['goal']}", markup=False)
    if view["gate"]:
        out.print(
            f"gate     step {view['gate']} waits for `soma runs approve|reject {row['id']}`",
            markup=False,
        )
    if view["error"]:
        out.print(f"error    {view['error']}", markup=False)
    from rich.table import Table

    table = Table(box=None, header_style="bold", title="steps")
    for col in ("step", "agent", "state", "tokens", "task", "output / error"):
        table.add_column(col)
    for s in view["steps"]:
        usage = s.get("usage") or {}
        tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        text = s.get("error") or s.get("output") or ""
        table.add_row(
            s["id"],
            s["agent"],
            s["state"],
            str(tokens or ""),
            s.get("task_id") or "",
            " ".join(text.split())[:80],
        )
    out.print(table)
    if view["report"]:
        out.print("report", style="bold")
        out.print(view["report"], markup=False)


def _gate(run_id: str, approved: bool, by: str, comment: str) -> None:
    from schemas.sagas import SagaSignal

    async def go() -> str:
        row = await _run_row(run_id)
        waiting = row["waiting"] or {}
        if waiting.get("kind") != "signal" or waiting.get("name") != "gate":
            terminal.fail(f"run {run_id} is not waiting at a gate ({row['state']})")
        payload = {"approved": approved, "by": by, "comment": comment}
        signal = SagaSignal(saga_id=run_id, name="gate", payload=payload)
        return await _send(signal, str(row["tenant"]), run_id)

    message_id = terminal.run(go())
    verb = "approved" if approved else "rejected"
    terminal.note(f"gate of {run_id} {verb} (message {message_id})")


@app.command("approve")
def approve(
    run_id: str = typer.Argument(..., help="The run id."),
    comment: str = typer.Option("", help="Kept with the decision."),
    by: str = typer.Option("operator", help="Who decides, as recorded on the step."),
) -> None:
    """Let the step a run waits for at its gate start."""
    _gate(run_id, True, by, comment)


@app.command("reject")
def reject(
    run_id: str = typer.Argument(..., help="The run id."),
    comment: str = typer.Option("", help="Why; it ends up in the run's error."),
    by: str = typer.Option("operator", help="Who decides, as recorded on the step."),
) -> None:
    """End a run at its gate: what its finished steps kept is undone in reverse."""
    _gate(run_id, False, by, comment)


@app.command("cancel")
def cancel(
    run_id: str = typer.Argument(..., help="The run id."),
    reason: str = typer.Option("", help="Why; kept in the run's error and history."),
) -> None:
    """Cancel a run: its running steps are cancelled, finished ones undone in reverse."""
    from schemas.sagas import SagaCancel

    async def go() -> str:
        row = await _run_row(run_id)
        return await _send(SagaCancel(saga_id=run_id, reason=reason), str(row["tenant"]), run_id)

    message_id = terminal.run(go())
    terminal.note(f"cancel sent to {run_id} (message {message_id}); `soma runs show {run_id}`")
