"""Retries with an ``Idempotency-Key`` against the whole system as OS processes: a gateway killed
with SIGKILL in the middle of a chat turn, a new gateway, the client's retry. The retry is
answered with the turn's outcome and the turn runs once: one model call, one memory write, one
usage record. The records live in the bus's key-value bucket, or in Redis when it is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.js.api import DeliverPolicy

from bus.connection import connect
from schemas.catalogue import STREAMS
from tests.e2e.conftest import wait_for_consumers
from tests.servers import (
    NatsServer,
    create_key,
    free_port,
    nats_server,
    require_service,
    stop_processes,
)
from tests.slm.fake_openai import openai_app
from tests.slm.scripted import Reply, Script, serving

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["identity", "policy", "memory", "slm", "tools", "sagas"]
MODEL = "slow-model"
ANSWER = "Sagas keep their state in SQL."
# Long enough for a gateway to be killed and another one to come up while the model works.
MODEL_SECONDS = 8.0
LEASE_SECONDS = 1.5
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class System:
    nats: NatsServer
    env: dict[str, str]
    script: Script
    key: str


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("idempotent-retries")


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[tuple[str, Script]]:
    """A model server speaking OpenAI's protocol, slow on purpose."""
    script = Script()
    async with serving(openai_app(script)) as url:
        yield url, script


@pytest.fixture(scope="module")
def system(data_dir: Path, upstream: tuple[str, Script]) -> Iterator[System]:
    url, script = upstream
    (data_dir / "models.yaml").write_text(
        f"models:\n  - name: {MODEL}\n    deployments:\n"
        f"      - {{provider: openai, model: {MODEL}, base_url: '{url}/v1'}}\n"
    )
    with nats_server() as server:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "QDRANT_URL")},
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data_dir),
            "SOMA_MODELS_FILE": str(data_dir / "models.yaml"),
            "SOMA_RETRY_INITIAL": "0.2",
            "OPENAI_API_KEY": "sk-fake",
        }
        env.pop("REDIS_URL", None)
        cli = [sys.executable, "-m", "soma.cli"]
        subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        key = create_key(env, "acme")
        procs = [subprocess.Popen([*cli, "run", name], env=env, cwd=ROOT) for name in PROCESSES]
        try:
            yield System(server, env, script, key)
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def ready(system: System) -> System:
    nc = await connect(system.nats.url, "faults-ready")
    try:
        await wait_for_consumers(nc.jetstream(), [*PROCESSES, "sagas-events"], timeout=120)
    finally:
        await nc.close()
    return system


@pytest.fixture(params=["bus", "redis"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Where the gateway keeps its records: the bus's key-value bucket, or a fresh Redis prefix."""
    if request.param == "bus":
        return {}
    require_service("Redis", "127.0.0.1", 6379)
    return {"REDIS_URL": REDIS_URL, "SOMA_REDIS_PREFIX": f"soma-faults:{uuid.uuid4().hex}:"}


class Gateway:
    """``soma run gateway`` as its own process, killed as a crash would kill it."""

    def __init__(self, system: System, extra: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **system.env,
            **extra,
            "SOMA_HTTP_PORT": str(self.port),
            "SOMA_RATE_RPM": "0",
            "SOMA_RATE_TPM": "0",
            "SOMA_IDEMPOTENCY_LEASE_SECONDS": str(LEASE_SECONDS),
            "SOMA_CHAT_TIMEOUT": "60",
        }
        self.key = system.key
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Gateway:
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "soma.cli", "run", "gateway"],
            env=self.env,
            cwd=ROOT,
        )
        async with httpx.AsyncClient(base_url=self.url) as client, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get("/v1/models", headers=self.headers())
                    if answer.status_code == 200:
                        return self
                assert self.proc.poll() is None, "the gateway exited during startup"
                await asyncio.sleep(0.2)

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.key}"}
        if idempotency_key:
            out["Idempotency-Key"] = idempotency_key
        return out

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextlib.asynccontextmanager
async def gateway(system: System, extra: dict[str, str]) -> AsyncIterator[Gateway]:
    started = Gateway(system, extra)
    try:
        yield await started.start()
    finally:
        started.stop()


def chat(prompt: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}


async def model_called(script: Script, times: int = 1) -> None:
    async with asyncio.timeout(60):
        while len(script.requests) < times:
            await asyncio.sleep(0.05)


async def events_of(system: System, correlation_id: str) -> Counter[str]:
    """How many events of each type the bus kept for one correlation id."""
    nc = await connect(system.nats.url, "faults-events")
    counts: Counter[str] = Counter()
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            "soma.evt.acme.>",
            stream=STREAMS["evt"],
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        pending = (await js.stream_info(STREAMS["evt"])).state.messages
        seen = 0
        with contextlib.suppress(TimeoutError):
            while seen < pending:
                msg = await sub.next_msg(timeout=2)
                seen = msg.metadata.sequence.stream
                if (msg.headers or {}).get("Soma-Correlation-Id") == correlation_id:
                    counts[".".join(msg.subject.split(".")[3:])] += 1
        await sub.unsubscribe()
    finally:
        await nc.close()
    return counts


def saga_of(completion: dict[str, object]) -> str:
    return str(completion["id"]).removeprefix("chatcmpl-")


async def test_a_retry_after_the_gateway_was_killed_mid_turn_gets_the_one_answer(
    ready: System, store_env: dict[str, str]
) -> None:
    ready.script.reset()
    ready.script.then(Reply(text=ANSWER, delay=MODEL_SECONDS))
    key = f"killed-{uuid.uuid4().hex}"
    body = chat("Where do sagas keep their state?")
    first = Gateway(ready, store_env)
    await first.start()
    async with httpx.AsyncClient(timeout=90) as client:
        lost = asyncio.create_task(
            client.post(f"{first.url}/v1/chat/completions", headers=first.headers(key), json=body)
        )
        await model_called(ready.script)
        first.kill()
        with pytest.raises(httpx.TransportError):
            await lost
        async with gateway(ready, store_env) as second:
            retry = await client.post(
                f"{second.url}/v1/chat/completions", headers=second.headers(key), json=body
            )
    assert retry.status_code == 200, retry.text
    assert retry.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(ready.script.requests) == 1
    events = await events_of(ready, saga_of(retry.json()))
    assert events["slm.completed"] == 1
    assert events["memory.stored"] == 1
    assert events["sagas.finished"] == 1


async def test_a_retry_after_the_turn_ended_without_its_gateway_gets_its_answer(
    ready: System,
) -> None:
    ready.script.reset()
    ready.script.then(Reply(text=ANSWER, delay=2.0))
    key = f"ended-{uuid.uuid4().hex}"
    body = chat("What keeps a saga's state?")
    first = Gateway(ready, {})
    await first.start()
    async with httpx.AsyncClient(timeout=90) as client:
        lost = asyncio.create_task(
            client.post(f"{first.url}/v1/chat/completions", headers=first.headers(key), json=body)
        )
        await model_called(ready.script)
        first.kill()
        with pytest.raises(httpx.TransportError):
            await lost
        await asyncio.sleep(4)  # the model answers and the saga ends, with no gateway listening
        async with gateway(ready, {}) as second:
            retry = await client.post(
                f"{second.url}/v1/chat/completions", headers=second.headers(key), json=body
            )
    assert retry.status_code == 200, retry.text
    assert retry.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(ready.script.requests) == 1
    events = await events_of(ready, saga_of(retry.json()))
    assert events["slm.completed"] == 1
    assert events["memory.stored"] == 1


async def test_a_retry_while_the_turn_runs_waits_and_gets_the_same_answer(
    ready: System, store_env: dict[str, str]
) -> None:
    ready.script.reset()
    ready.script.then(Reply(text=ANSWER, delay=3.0))
    key = f"waiting-{uuid.uuid4().hex}"
    body = chat("Where is a saga's state?")
    async with gateway(ready, store_env) as gw, httpx.AsyncClient(timeout=90) as client:
        url = f"{gw.url}/v1/chat/completions"
        first = asyncio.create_task(client.post(url, headers=gw.headers(key), json=body))
        await model_called(ready.script)
        retry = await client.post(url, headers=gw.headers(key), json=body)
        answered = await first
    assert answered.status_code == retry.status_code == 200, retry.text
    assert retry.json() == answered.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert len(ready.script.requests) == 1


async def test_a_completed_answer_is_replayed_by_a_restarted_gateway(ready: System) -> None:
    ready.script.reset()
    ready.script.then(Reply(text=ANSWER))
    key = f"restarted-{uuid.uuid4().hex}"
    body = chat("Say where state lives.")
    async with httpx.AsyncClient(timeout=90) as client:
        async with gateway(ready, {}) as gw:
            first = await client.post(
                f"{gw.url}/v1/chat/completions", headers=gw.headers(key), json=body
            )
        async with gateway(ready, {}) as gw:
            replayed = await client.post(
                f"{gw.url}/v1/chat/completions", headers=gw.headers(key), json=body
            )
            other = await client.post(
                f"{gw.url}/v1/chat/completions",
                headers=gw.headers(key),
                json=chat("Something else entirely."),
            )
    assert first.status_code == replayed.status_code == 200
    assert replayed.json() == first.json()
    assert replayed.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert len(ready.script.requests) == 1


async def test_a_streamed_retry_of_an_ended_turn_streams_its_answer_without_a_second_turn(
    ready: System,
) -> None:
    ready.script.reset()
    ready.script.then(Reply(text=ANSWER))
    key = f"streamed-{uuid.uuid4().hex}"
    body = {**chat("Stream where state lives."), "stream": True}
    streams = []
    async with gateway(ready, {}) as gw, httpx.AsyncClient(timeout=90) as client:
        for _ in range(2):
            async with client.stream(
                "POST", f"{gw.url}/v1/chat/completions", headers=gw.headers(key), json=body
            ) as response:
                streams.append((await response.aread()).decode())
    for text in streams:
        assert text.rstrip().endswith("data: [DONE]")
        assert streamed_content(text) == ANSWER
    assert len(ready.script.requests) == 1


def streamed_content(text: str) -> str:
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: {")
    ]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
