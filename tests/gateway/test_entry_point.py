"""``soma run gateway`` runs ``gateway.app.serve``; and the gateway reaches handlers only
through the bus."""

from __future__ import annotations

import ast
import asyncio
import contextlib
from pathlib import Path

import httpx

from gateway.app import serve
from kernel.settings import Settings
from tests.gateway.standins import World
from tests.servers import free_port

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


async def test_serve_listens_on_the_configured_host_and_port(
    gw_settings: Settings, world: World
) -> None:
    port = free_port()
    settings = gw_settings.model_copy(update={"http_port": port, "http_host": "127.0.0.1"})
    task = asyncio.create_task(serve(settings))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway never became ready")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_the_gateway_imports_no_handler_or_saga_code() -> None:
    imported: set[str] = set()
    for path in GATEWAY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
    ours = {
        name
        for name in imported
        if name.split(".")[0] in {"handlers", "sagas", "soma", "bus", "schemas", "gateway"}
    }
    assert not {n for n in ours if n.split(".")[0] in {"handlers", "sagas"}}
    # Of soma/ only the shared kernel: settings, the SQL engine, telemetry and log setup.
    kernel = {"kernel.settings", "kernel.db", "kernel.telemetry", "kernel.logs"}
    assert {n for n in ours if n.startswith("soma")} <= kernel
