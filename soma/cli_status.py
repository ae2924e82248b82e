"""``soma status``: what runs where — the NATS server, each process's consumers, the gateway.

An operator's first command on a machine they do not know: it says which system the commands
work on and why that one (the variables that name it, or the record a running ``soma up``
wrote), its NATS server, data folder and database, whether each process is consuming (its
durable consumer has pulls waiting), how far behind it is, and whether the gateway and the
console answer. It exits 1 when no system is found or its NATS server does not answer, so
scripts can tell "nothing runs here" from a running system.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from soma import terminal

# Each process's durable consumers (a process is consuming when one of them has pulls waiting).
CONSUMERS = {
    "identity": ["identity"],
    "policy": ["policy"],
    "memory": ["memory"],
    "slm": ["slm"],
    "tools": ["tools"],
    "analytics": ["analytics-events"],
    "sagas": ["sagas", "sagas-events"],
}


def _answers(url: str, probe: str) -> dict[str, Any]:
    import httpx

    try:
        answer = httpx.get(probe, timeout=2)
    except httpx.HTTPError:
        return {"url": url, "state": "not answering"}
    return {"url": url, "state": "up" if answer.status_code == 200 else f"{answer.status_code}"}


def status(
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """Show what runs where: which system and why, NATS, data, each process, gateway, console.

    The system is the one `NATS_URL`, `SOMA_DATA_DIR` or `DATABASE_URL` name, else the one a
    running `soma up` recorded (`~/.config/soma/system.json`); the first line says which. A
    process is `consuming` when its durable consumer has pulls waiting (its replicas count
    in `pulls`), `stopped` when the consumer exists but nobody pulls, `never started` when it
    has no consumer yet. Exits 1 when no system is found or its NATS server does not answer.

    **Examples**

        soma status
        soma status -o json | jq '.processes.slm'

    **Environment**

    * `NATS_URL`, `SOMA_DATA_DIR`, `DATABASE_URL` — the system (default: that of the running
      `soma up`; none: an error)
    * `SOMA_HTTP_HOST`, `SOMA_HTTP_PORT` — where the gateway is looked for, when no running
      `soma up` says where it is
    """
    from bus.errors import BusUnavailable
    from kernel.logs import redact
    from soma import stream_status
    from soma.supervisor import probe_host, safe_url
    from soma.system import NoSystem, nats_url

    if output not in ("text", "json"):
        terminal.fail(f"-o {output!r}: choose from text, json", terminal.USAGE)
    located = terminal.located()
    settings = located.settings
    try:
        url, source = nats_url(settings)
    except NoSystem as exc:
        terminal.fail(str(exc))
    record = located.record
    gateway_url = (
        record.gateway_url
        if record is not None
        else f"http://{probe_host(settings.http_host)}:{settings.http_port}"
    )

    async def look() -> dict[str, Any]:
        async with terminal.bus(settings, "soma-status") as (nc, _js):
            server = nc._server_info or {}
            streams = await stream_status.collect(nc)
        consumers = {c["name"]: c for s in streams for c in s["consumers"]}
        processes: dict[str, Any] = {}
        for process, names in CONSUMERS.items():
            found = [consumers[n] for n in names if n in consumers]
            if not found:
                processes[process] = {"state": "never started", "pulls": 0, "pending": 0}
                continue
            pulls = sum(int(c["waiting"]) for c in found)
            processes[process] = {
                "state": "consuming" if pulls else "stopped",
                "pulls": pulls,
                "pending": sum(int(c["pending"]) for c in found),
            }
        return {
            "system": {
                "from": located.source,
                "soma_up_pid": record.pid if record is not None else None,
                "started_at": record.started_at if record is not None else None,
            },
            "nats": {
                "url": redact(url),
                "from": source,
                "server": server.get("server_name", ""),
                "version": server.get("version", ""),
                "jetstream": bool(server.get("jetstream")),
                "streams": len(streams),
            },
            "data_dir": str(settings.data_dir.resolve()),
            "database": safe_url(settings.database_url)
            if settings.database_url
            else f"SQLite files in {settings.data_dir.resolve()}",
            "processes": processes,
            "gateway": _answers(gateway_url, f"{gateway_url}/healthz")
            if gateway_url
            else {"url": None, "state": "not started"},
            "console": _answers(record.console_url, record.console_url)
            if record is not None and record.console_url
            else {"url": None, "state": "unknown" if record is None else "not started"},
        }

    try:
        found = terminal.run(look())
    except BusUnavailable as exc:  # pragma: no cover - terminal.run already fails on it
        terminal.fail(str(exc))
    if output == "json":
        sys.stdout.write(json.dumps(found) + "\n")
        return
    where = found["system"]
    terminal.out.print(f"system    from {where['from']}", markup=False)
    nats = found["nats"]
    why = "from that record" if nats["from"] == where["from"] else nats["from"]
    terminal.out.print(f"NATS      {nats['url']} ({why})", markup=False)
    terminal.out.print(
        f"          {nats['server']} {nats['version']}, JetStream "
        f"{'on' if nats['jetstream'] else 'off'}, {nats['streams']} streams",
        markup=False,
    )
    terminal.out.print(f"data      {found['data_dir']}", markup=False)
    terminal.out.print(f"database  {found['database']}", markup=False)
    for process, state in found["processes"].items():
        terminal.out.print(
            f"{process:<9} {state['state']:<14} pulls {state['pulls']:<3} "
            f"pending {state['pending']}",
            markup=False,
        )
    for part in ("gateway", "console"):
        state = found[part]
        at = f" at {state['url']}" if state["url"] else ""
        terminal.out.print(f"{part:<9} {state['state']}{at}", markup=False)
