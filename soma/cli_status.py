"""``soma status``: what runs where — the NATS server, each process's consumers, the gateway.

An operator's first command on a machine they do not know: it says which NATS server the
commands talk to and why that one (``NATS_URL``, the URL ``soma up`` recorded, or the default),
whether each process is consuming (its durable consumer has pulls waiting), how far behind it
is, and whether the gateway answers on ``SOMA_HTTP_HOST:SOMA_HTTP_PORT``. It exits 1 when no
NATS server answers, so scripts can tell "nothing runs here" from a running system.
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


def _gateway(host: str, port: int) -> dict[str, Any]:
    import httpx

    url = f"http://{host}:{port}"
    try:
        answer = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return {"url": url, "state": "not answering"}
    return {"url": url, "state": "up" if answer.status_code == 200 else f"{answer.status_code}"}


def status(
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """Show what runs where: NATS (and why that server), each process, the gateway.

    A process is `consuming` when its durable consumer has pulls waiting (its replicas count
    in `pulls`), `stopped` when the consumer exists but nobody pulls, `never started` when it
    has no consumer yet. Exits 1 when no NATS server answers.

    **Examples**

        soma status
        soma status -o json | jq '.processes.slm'

    **Environment**

    * `NATS_URL` — the NATS server (default: the one `soma up` recorded, else :4222)
    * `SOMA_HTTP_HOST`, `SOMA_HTTP_PORT` — where the gateway is looked for
    """
    from bus.errors import BusUnavailable
    from kernel.logs import redact
    from soma import stream_status
    from soma.embedded import resolve_url
    from soma.supervisor import safe_url

    if output not in ("text", "json"):
        terminal.fail(f"-o {output!r}: choose from text, json", terminal.USAGE)
    settings = terminal.settings()
    url, source = resolve_url(settings)

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
            "nats": {
                "url": redact(url),
                "from": source,
                "server": server.get("server_name", ""),
                "version": server.get("version", ""),
                "jetstream": bool(server.get("jetstream")),
                "streams": len(streams),
            },
            "data_dir": str(settings.data_dir.resolve()),
            "database": safe_url(settings.database_url) if settings.database_url
            else f"SQLite files in {settings.data_dir.resolve()}",
            "processes": processes,
            "gateway": _gateway(settings.http_host, settings.http_port),
        }

    try:
        found = terminal.run(look())
    except BusUnavailable as exc:  # pragma: no cover - terminal.run already fails on it
        terminal.fail(str(exc))
    if output == "json":
        sys.stdout.write(json.dumps(found) + "\n")
        return
    nats = found["nats"]
    terminal.out.print(f"NATS      {nats['url']} ({nats['from']})", markup=False)
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
    gateway = found["gateway"]
    terminal.out.print(f"gateway   {gateway['state']} at {gateway['url']}", markup=False)
