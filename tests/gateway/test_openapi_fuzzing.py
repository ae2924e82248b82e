"""Schemathesis generates requests from ``/openapi.json``; no input may produce a 5xx."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.gateway.standins import World

ST = Path(sys.executable).with_name("st")


async def test_no_generated_request_gets_a_server_error(
    gateway_url: str, world: World, tmp_path: Path
) -> None:
    token = world.identity.sign(
        world.identity.claims("fuzzed", "fuzzer", ["admin", "operator", "member"])
    )
    process = await asyncio.create_subprocess_exec(
        str(ST),
        "run",
        f"{gateway_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "4",
        "--phases",
        "examples,fuzzing",
        "--workers",
        "2",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    assert process.returncode == 0, output.decode()[-6000:]
