"""A gateway on one chat pipeline and the processes its turns use, as OS processes on their own
nats-server, in front of a scripted model server speaking OpenAI's protocol: what the
end-to-end tests of each pipeline (``SOMA_CHAT_PIPELINE``) call through the official SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from bus.connection import connect
from tests.e2e.conftest import ROOT, wait_for_consumers
from tests.servers import NatsServer, create_key, free_port, nats_server, stop_processes
from tests.slm.fake_openai import openai_app
from tests.slm.scripted import Script, serving

MODEL = "upstream-model"
TENANT = "acme"


@dataclass
class ChatSystem:
    nats: NatsServer
    url: str
    key: str
    script: Script
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=60
        )

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key:
            out["Idempotency-Key"] = idempotency_key
        return out

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "soma.cli", "run", name], env=self.env, cwd=ROOT
        )

    def kill(self, name: str) -> None:
        """SIGKILL the process ``name`` and wait until it is gone."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def chat_system(
    pipeline: str,
    processes: list[str],
    consumers: list[str],
    data: Path,
    env: dict[str, str] | None = None,
) -> AsyncIterator[ChatSystem]:
    """``processes`` and a gateway on ``pipeline`` in front of a scripted model server that
    serves ``MODEL``, once every durable in ``consumers`` is bound and the gateway is ready; an
    admin key of tenant ``TENANT``. Embedded stores in ``data``; rate limits off; ``env`` on top
    of the environment every process has."""
    script = Script()
    async with serving(openai_app(script)) as upstream:
        with _processes(pipeline, processes, upstream, script, data, env or {}) as system:
            await _until_ready(system, consumers)
            yield system


@contextlib.contextmanager
def _processes(
    pipeline: str,
    processes: list[str],
    upstream: str,
    script: Script,
    data: Path,
    extra: dict[str, str],
) -> Iterator[ChatSystem]:
    (data / "models.yaml").write_text(
        f"models:\n  - name: {MODEL}\n    deployments:\n"
        f"      - {{provider: openai, model: {MODEL}, base_url: '{upstream}/v1',\n"
        "         input_per_1m: 1.0, output_per_1m: 2.0}\n"
    )
    port = free_port()
    with nats_server() as server:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_MODELS_FILE": str(data / "models.yaml"),
            "OPENAI_API_KEY": "sk-fake",
            "SOMA_HTTP_PORT": str(port),
            "SOMA_RATE_RPM": "0",
            "SOMA_RATE_TPM": "0",
            # A delivery lost with a killed process comes again within seconds.
            "SOMA_ACK_WAIT": "3",
            "SOMA_CHAT_PIPELINE": pipeline,
            **extra,
        }
        cli = [sys.executable, "-m", "soma.cli"]
        subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        key = create_key(env, TENANT, role="admin")
        system = ChatSystem(server, f"http://127.0.0.1:{port}", key, script, env)
        try:
            for name in [*processes, "gateway"]:
                system.start(name)
            yield system
        finally:
            stop_processes(system.procs.values())


async def _until_ready(system: ChatSystem, consumers: list[str]) -> None:
    nc = await connect(system.nats.url, "chat-system-ready")
    try:
        await wait_for_consumers(nc.jetstream(), consumers, timeout=120)
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=system.url) as client, asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
