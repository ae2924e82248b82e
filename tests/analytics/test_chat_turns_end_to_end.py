"""100 real chat turns through the whole system — saga runner, policy, memory, the local model and
analytics, each its own OS process — and the usage report agrees with the turns' own events."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from schemas.analytics import AnalyticsReport, AnalyticsReported
from schemas.catalogue import STREAMS
from schemas.chat import ChatTurnInput
from schemas.envelope import new_id
from schemas.sagas import SagaFinished, SagaStart
from schemas.slm import ChatMessage, SlmCompleted
from tests.servers import NatsServer, nats_server, stop_processes

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["policy", "memory", "slm", "tools", "sagas", "analytics"]
CONSUMERS = ["policy", "memory", "slm", "tools", "sagas", "sagas-events", "analytics-events"]
TURNS = 100
AT_ONCE = 10
TENANTS = ("acme", "globex")
# Two priced names for the offline local model, so that cost and the model dimension are real.
MODELS_FILE = """
models:
  - name: local-small
    deployments:
      - {provider: local, model: soma-local-dev, input_per_1m: 0.15, output_per_1m: 0.60}
  - name: local-large
    deployments:
      - {provider: local, model: soma-local-dev, input_per_1m: 2.50, output_per_1m: 10.00}
"""
PROMPTS = [
    "Tell me about sagas",
    "Summarise the outbox pattern in two sentences",
    "What is a durable consumer, and why would a handler need one at all?",
    "hello",
    "Explain idempotency keys with an example from payments, step by step, please",
]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    data = tmp_path_factory.mktemp("analytics-system")
    (data / "models.yaml").write_text(MODELS_FILE)
    with nats_server() as server:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "QDRANT_URL")},
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_MODELS_FILE": str(data / "models.yaml"),
            "SOMA_RETRY_INITIAL": "0.2",
        }
        subprocess.run(
            [sys.executable, "-m", "soma.cli", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        procs = [
            subprocess.Popen([sys.executable, "-m", "soma.cli", "run", name], env=env, cwd=ROOT)
            for name in PROCESSES
        ]
        try:
            yield server
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def requester(system: NatsServer) -> AsyncIterator[Requester]:
    nc = await connect(system.url, "analytics-e2e")
    js = nc.jetstream()
    async with asyncio.timeout(90):
        for name in CONSUMERS:
            stream = STREAMS["evt"] if name.endswith("-events") else STREAMS["cmd"]
            while True:
                try:
                    await js.consumer_info(stream, name)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
    requester = Requester(nc, js)
    await requester.start()
    yield requester
    await requester.close()
    await nc.close()


async def _turn(requester: Requester, tenant: str, turn: ChatTurnInput) -> list[SlmCompleted]:
    """Run one chat turn; the completions its own events report."""
    saga_id = new_id()
    completions: list[SlmCompleted] = []
    async with requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="chat_turn", saga_id=saga_id, input=msgspec.to_builtins(turn))
        env = envelope_for(cmd, tenant=tenant, correlation_id=saga_id, actor=turn.user or "")
        await publish(requester.bus, cmd, env)
        async with asyncio.timeout(120):
            while True:
                event = await events.get()
                if isinstance(event.payload, SlmCompleted):
                    completions.append(event.payload)
                if isinstance(event.payload, SagaFinished):
                    assert event.payload.state == "completed", event.payload.error
                    return completions


async def _drained(requester: Requester) -> None:
    async with asyncio.timeout(60):
        while True:
            info = await requester.js.consumer_info(STREAMS["evt"], "analytics-events")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.1)


async def test_usage_after_100_chat_turns_equals_the_turns_completions(
    requester: Requester,
) -> None:
    rng = random.Random(7)
    plan = [
        (
            rng.choice(TENANTS),
            ChatTurnInput(
                model=rng.choice(["local-small", "local-large"]),
                messages=[ChatMessage(role="user", content=rng.choice(PROMPTS))],
                user=rng.choice(["u-ada", "u-bob"]),
                use_memory=rng.random() < 0.3,
            ),
        )
        for _ in range(TURNS)
    ]
    gate = asyncio.Semaphore(AT_ONCE)

    async def run(tenant: str, turn: ChatTurnInput) -> tuple[str, list[SlmCompleted]]:
        async with gate:
            return tenant, await _turn(requester, tenant, turn)

    done = await asyncio.gather(*(run(tenant, turn) for tenant, turn in plan))
    await _drained(requester)

    calls: dict[str, dict[str, list[SlmCompleted]]] = defaultdict(lambda: defaultdict(list))
    for tenant, completions in done:
        for c in completions:
            calls[tenant][c.model].append(c)
    for tenant in TENANTS:
        _, reply = await requester.request(
            AnalyticsReport(group_by=["model"]),
            tenant=tenant,
            expect={"analytics.reported"},
            timeout=20,
        )
        assert isinstance(reply.payload, AnalyticsReported)
        got = {r.group["model"]: r for r in reply.payload.rows}
        assert set(got) == set(calls[tenant])
        for model, cs in calls[tenant].items():
            row = got[model]
            assert (row.requests, row.errors) == (len(cs), 0)
            assert row.prompt_tokens == sum(c.usage.prompt_tokens for c in cs)
            assert row.completion_tokens == sum(c.usage.completion_tokens for c in cs)
            assert row.cost_usd == pytest.approx(sum(c.cost_usd for c in cs), rel=1e-9)
            assert row.latency_ms_avg == pytest.approx(
                sum(c.latency_ms for c in cs) / len(cs), rel=1e-9
            )

        _, by_saga = await requester.request(
            AnalyticsReport(group_by=["saga_type"]),
            tenant=tenant,
            expect={"analytics.reported"},
            timeout=20,
        )
        assert isinstance(by_saga.payload, AnalyticsReported)
        [row] = by_saga.payload.rows
        assert row.group == {"saga_type": "chat_turn"}
        assert row.requests == sum(1 for t, _ in plan if t == tenant)
        assert row.latency_ms_avg > 0
