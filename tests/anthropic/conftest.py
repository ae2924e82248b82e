"""The whole chat-turn path as OS processes — gateway, identity, policy, memory, slm, the saga
runner — on one nats-server, with two model servers speaking OpenAI's and Anthropic's protocols
beside the offline development model, for the official ``anthropic`` and ``openai`` SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anthropic
import httpx
import openai
import pytest

from bus.connection import connect
from tests.e2e.conftest import ROOT, wait_for_consumers
from tests.servers import create_key, free_port, nats_server, stop_processes
from tests.slm.fake_anthropic import anthropic_app
from tests.slm.fake_openai import openai_app
from tests.slm.scripted import Script, serving

TENANT = "acme"
PROCESSES = ["identity", "policy", "memory", "slm", "sagas"]
# Served by the fake servers: a model behind OpenAI's protocol and one behind Anthropic's.
OPENAI_MODEL = "gpt-upstream"
ANTHROPIC_MODEL = "claude-upstream"


@dataclass
class Upstreams:
    openai_url: str
    openai: Script
    anthropic_url: str
    anthropic: Script


@dataclass
class Hub:
    url: str
    key: str
    upstreams: Upstreams

    def anthropic(self, key: str | None = None) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.url, api_key=key or self.key, max_retries=0, timeout=60
        )

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=60
        )


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[Upstreams]:
    openai_script, anthropic_script = Script(), Script()
    async with (
        serving(openai_app(openai_script)) as openai_url,
        serving(anthropic_app(anthropic_script)) as anthropic_url,
    ):
        yield Upstreams(openai_url, openai_script, anthropic_url, anthropic_script)


@pytest.fixture(scope="module")
def processes(
    upstreams: Upstreams, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """Yields (NATS URL, gateway URL, a member's API key)."""
    data = tmp_path_factory.mktemp("anthropic")
    (data / "models.yaml").write_text(
        "models:\n"
        "  - name: soma-local-dev\n"
        "    deployments: [{provider: local, model: soma-local-dev}]\n"
        f"  - name: {OPENAI_MODEL}\n"
        "    images: true\n"
        "    deployments:\n"
        f"      - {{provider: openai, model: {OPENAI_MODEL}, "
        f"base_url: '{upstreams.openai_url}/v1'}}\n"
        f"  - name: {ANTHROPIC_MODEL}\n"
        "    images: true\n"
        "    deployments:\n"
        f"      - {{provider: anthropic, model: {ANTHROPIC_MODEL}, "
        f"api_key_env: ANTHROPIC_API_KEY, base_url: '{upstreams.anthropic_url}'}}\n"
    )
    port = free_port()
    with nats_server() as server:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_MODELS_FILE": str(data / "models.yaml"),
            "ANTHROPIC_API_KEY": "sk-ant-fake",
            "SOMA_HTTP_PORT": str(port),
            "SOMA_RATE_RPM": "0",
            "SOMA_RATE_TPM": "0",
            "SOMA_RETRY_INITIAL": "0.2",
        }
        cli = [sys.executable, "-m", "soma.cli"]
        subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        key = create_key(env, TENANT)
        procs = [
            subprocess.Popen([*cli, "run", name], env=env, cwd=ROOT)
            for name in [*PROCESSES, "gateway"]
        ]
        try:
            yield server.url, f"http://127.0.0.1:{port}", key
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def ready(processes: tuple[str, str, str], upstreams: Upstreams) -> Hub:
    nats_url, url, key = processes
    nc = await connect(nats_url, "anthropic-ready")
    try:
        await wait_for_consumers(nc.jetstream(), [*PROCESSES, "sagas-events"], timeout=120)
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
    return Hub(url, key, upstreams)


@pytest.fixture
def hub(ready: Hub) -> Hub:
    ready.upstreams.openai.reset()
    ready.upstreams.anthropic.reset()
    return ready
