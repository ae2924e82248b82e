"""`soma status`: which NATS server and why, each process's consumers, the gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from schemas.catalogue import STREAMS
from tests.cli.conftest import Soma, clean_env
from tests.servers import free_port


async def test_status_names_the_server_and_how_each_process_is_doing(
    js: JetStreamContext, soma: Soma
) -> None:
    await js.add_consumer(
        STREAMS["cmd"],
        ConsumerConfig(
            durable_name="policy",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="soma.cmd.*.policy.>",
        ),
    )
    pulling = await js.pull_subscribe_bind("policy", STREAMS["cmd"])
    waiting = asyncio.ensure_future(pulling.fetch(1, timeout=5))
    await asyncio.sleep(0.3)
    try:
        result = await soma("status", "-o", "json")
    finally:
        waiting.cancel()
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["nats"]["from"] == "NATS_URL" and found["nats"]["jetstream"]
    assert found["processes"]["policy"]["state"] == "consuming"
    assert found["processes"]["slm"]["state"] == "never started"
    assert found["gateway"]["state"] == "not answering"


async def test_status_with_no_server_running_says_so_and_exits_1(tmp_path: Path) -> None:
    soma = Soma(clean_env(NATS_URL=f"nats://127.0.0.1:{free_port()}", SOMA_DATA_DIR=str(tmp_path)))
    result = await soma("status")
    assert result.exit_code == 1
    assert "NATS_URL" in result.stderr
