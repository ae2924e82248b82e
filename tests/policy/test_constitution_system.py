"""A tenant's constitution over the real bus: identity, policy, slm, the saga runner and the
gateway as their own processes on one nats-server, and the judge model a local server speaking
OpenAI's protocol (scripted per test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.api import DeliverPolicy

from bus.connection import connect
from bus.request import Requester
from kernel.constitution import content_hash, public_text, sign
from kernel.grants import default_source
from schemas.catalogue import STREAMS
from schemas.policy import PolicyEvaluate, PolicyEvaluated
from tests.e2e.conftest import wait_for_consumers
from tests.servers import NatsServer, create_key, free_port, nats_server, stop_processes
from tests.slm.fake_openai import openai_app
from tests.slm.scripted import Reply, Script, serving

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["identity", "policy", "slm", "sagas"]
JUDGE = "judge-model"
KEYED_TENANTS = ("acme", "judged")


@dataclass
class System:
    nats: NatsServer
    url: str
    keys: dict[str, str]
    policy: Path
    script: Script
    signer: Ed25519PrivateKey
    requester: Requester

    def constitution(self, tenant: str, text: str, *, signed_by: Any = None) -> str:
        """Write the tenant's constitution (and its signature); its hash."""
        source = text.encode()
        (self.policy / f"{tenant}.yaml").write_bytes(source)
        if signed_by is not None:
            (self.policy / f"{tenant}.yaml.sig").write_text(sign(source, signed_by))
        return content_hash(source, default_source())


@pytest.fixture(scope="module")
async def judge_model() -> AsyncIterator[tuple[str, Script]]:
    script = Script()
    async with serving(openai_app(script)) as url:
        yield url, script


@pytest.fixture(scope="module")
def processes(
    judge_model: tuple[str, Script], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[NatsServer, str, dict[str, str], Path, Ed25519PrivateKey]]:
    url, _ = judge_model
    data = tmp_path_factory.mktemp("constitution")
    (data / "policy").mkdir()
    signer = Ed25519PrivateKey.generate()
    (data / "policy-trust.yaml").write_text(
        "tenants:\n  signed:\n    require_signature: true\n"
        f"    keys: ['{public_text(signer.public_key())}']\n"
    )
    (data / "models.yaml").write_text(
        "models:\n"
        f"  - name: {JUDGE}\n    deployments:\n"
        f"      - {{provider: openai, model: {JUDGE}, base_url: '{url}/v1'}}\n"
        "  - name: soma-local-dev\n    deployments:\n"
        "      - {provider: local, model: soma-local-dev}\n"
    )
    port = free_port()
    with nats_server() as server:
        env = {
            **{
                k: v
                for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "REDIS_URL", "SOMA_POLICY_DIR")
            },
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_MODELS_FILE": str(data / "models.yaml"),
            "OPENAI_API_KEY": "sk-fake",
            "SOMA_HTTP_PORT": str(port),
            "SOMA_RATE_RPM": "0",
            "SOMA_RATE_TPM": "0",
            "SOMA_RETRY_INITIAL": "0.2",
        }
        env.pop("SOMA_POLICY_TRUST_FILE", None)
        cli = [sys.executable, "-m", "soma.cli"]
        subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        keys = {tenant: create_key(env, tenant) for tenant in KEYED_TENANTS}
        procs = [
            subprocess.Popen([*cli, "run", name], env=env, cwd=ROOT)
            for name in [*PROCESSES, "gateway"]
        ]
        try:
            yield server, f"http://127.0.0.1:{port}", keys, data / "policy", signer
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def ready(
    processes: tuple[NatsServer, str, dict[str, str], Path, Ed25519PrivateKey],
    judge_model: tuple[str, Script],
) -> AsyncIterator[System]:
    server, url, keys, policy, signer = processes
    nc = await connect(server.url, "constitution-test")
    await wait_for_consumers(nc.jetstream(), [*PROCESSES, "sagas-events"], timeout=120)
    async with httpx.AsyncClient(base_url=url) as client, asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.2)
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    yield System(server, url, keys, policy, judge_model[1], signer, requester)
    await requester.close()
    await nc.close()


@pytest.fixture
def system(ready: System) -> System:
    ready.script.reset()
    return ready


def reloaded() -> None:
    """Past the interval within which the policy process looks at a tenant file once."""
    time.sleep(1.2)


async def evaluate(system: System, tenant: str, text: str) -> PolicyEvaluated:
    _, reply = await system.requester.request(
        PolicyEvaluate(stage="prompt", text=text), tenant=tenant, expect={"policy.evaluated"}
    )
    assert isinstance(reply.payload, PolicyEvaluated), reply.payload
    return reply.payload


async def chat(system: System, tenant: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=system.url, timeout=60) as client:
        return await client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {system.keys[tenant]}"},
            json={
                "model": "soma-local-dev",
                "messages": [{"role": "user", "content": text}],
                "use_memory": False,
            },
        )


async def policy_events(system: System, tenant: str) -> list[tuple[str, dict[str, Any]]]:
    """Every policy event the bus kept for ``tenant``, in stream order: (type, payload)."""
    nc = await connect(system.nats.url, "constitution-events")
    found: list[tuple[str, dict[str, Any]]] = []
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            f"soma.evt.{tenant}.policy.>",
            stream=STREAMS["evt"],
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        with contextlib.suppress(TimeoutError):
            while True:
                msg = await sub.next_msg(timeout=1)
                found.append((msg.subject.rsplit(".", 1)[-1], msgspec.json.decode(msg.data)))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


BLOCKS_DURIAN = """\
version: 2
blocked_topics:
  - id: topic.durian
    reason: durian is not discussed here
    keywords: [durian]
    examples: [tell me about durian]
"""

PRINCIPLED = """\
version: 1
principles:
  - id: no-diagnosis
    text: Never diagnose a medical condition; suggest seeing a doctor instead.
judge:
  model: judge-model
  stages: [prompt]
  timeout: 15
"""


def silent_judge(on_failure: str) -> str:
    return (
        "version: 1\nprinciples:\n  - id: be-kind\n    text: Be kind to everyone.\n"
        f"judge: {{model: {JUDGE}, timeout: 0.5, on_failure: {on_failure}}}\n"
    )


async def test_a_decision_event_names_the_constitution_hash(system: System) -> None:
    expected = system.constitution("hashed", "version: 7\ndescription: ours\n")
    decision = await evaluate(system, "hashed", "hello")
    assert decision.constitution == expected
    assert expected.startswith("sha256:") and len(expected) == len("sha256:") + 64


async def test_a_changed_constitution_is_announced_and_the_next_turn_is_judged_under_it(
    system: System,
) -> None:
    first = system.constitution("acme", "version: 1\n")
    answered = await chat(system, "acme", "tell me about durian")
    assert answered.status_code == 200, answered.text
    assert answered.json()["constitution"] == first
    assert answered.headers["soma-constitution"] == first

    second = system.constitution("acme", BLOCKS_DURIAN)
    reloaded()
    refused = await chat(system, "acme", "tell me about durian")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "content_filter"
    assert refused.headers["soma-constitution"] == second

    events = await policy_events(system, "acme")
    changes = [p for kind, p in events if kind == "constitution_changed"]
    assert [(c["old_hash"], c["new_hash"]) for c in changes] == [("", first), (first, second)]
    assert "rules added: topic.durian" in changes[-1]["summary"]
    announced = events.index(("constitution_changed", changes[-1]))
    judged = [i for i, (k, p) in enumerate(events) if p.get("constitution") == second]
    assert judged and announced < min(judged)


async def test_an_unsigned_constitution_is_refused_where_signing_is_required(
    system: System,
) -> None:
    signed = system.constitution("signed", "version: 1\n", signed_by=system.signer)
    assert (await evaluate(system, "signed", "hello")).constitution == signed

    (system.policy / "signed.yaml.sig").unlink()
    system.constitution("signed", BLOCKS_DURIAN)
    reloaded()
    decision = await evaluate(system, "signed", "tell me about durian")
    assert decision.constitution == signed
    assert decision.decision == "allow"
    refusals = [p for kind, p in await policy_events(system, "signed") if kind.endswith("refused")]
    assert len(refusals) == 1
    assert "unsigned" in refusals[0]["reason"] and refusals[0]["in_force"] == signed


async def test_a_constitution_signed_with_another_key_is_refused(system: System) -> None:
    stranger = Ed25519PrivateKey.generate()
    kept = system.constitution("signed", "version: 1\n", signed_by=system.signer)
    reloaded()
    assert (await evaluate(system, "signed", "hello")).constitution == kept
    system.constitution("signed", BLOCKS_DURIAN, signed_by=stranger)
    reloaded()
    decision = await evaluate(system, "signed", "tell me about durian")
    assert decision.constitution == kept
    refusals = [p for kind, p in await policy_events(system, "signed") if kind.endswith("refused")]
    assert "does not verify" in refusals[-1]["reason"]


async def test_a_broken_principle_is_caught_by_the_judge_and_the_turn_refused_naming_it(
    system: System,
) -> None:
    system.constitution("judged", PRINCIPLED)
    system.script.then(
        Reply(
            text='{"violated": [{"principle": "no-diagnosis", '
            '"reason": "it asks which disease the symptoms mean"}]}'
        )
    )
    response = await chat(system, "judged", "I have a rash and a fever: which disease is it?")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "content_filter"
    assert "no-diagnosis" in error["message"]
    asked = system.script.requests[0]
    assert asked["model"] == JUDGE
    assert "Never diagnose a medical condition" in asked["messages"][0]["content"]
    assert "rash and a fever" in asked["messages"][1]["content"]
    verdicts = [
        p["judge"]
        for kind, p in await policy_events(system, "judged")
        if kind == "evaluated" and p.get("judge")
    ]
    assert verdicts[-1]["outcome"] == "violated"
    assert verdicts[-1]["violated"] == ["no-diagnosis"]


async def test_the_same_text_under_the_same_constitution_is_judged_once(system: System) -> None:
    system.constitution("judged", PRINCIPLED)
    system.script.then(Reply(text='{"violated": []}'))
    first = await evaluate(system, "judged", "What is a good name for a cat?")
    again = await evaluate(system, "judged", "What is a good name for a cat?")
    assert first.decision == again.decision == "allow"
    assert first.judge is not None and first.judge.outcome == "kept" and not first.judge.cached
    assert again.judge is not None and again.judge.cached
    assert len(system.script.requests) == 1


async def test_a_silent_judge_denies_where_the_tenant_fails_closed(system: System) -> None:
    system.constitution("closed", silent_judge("closed"))
    system.script.then(Reply(text='{"violated": []}', delay=3))
    decision = await evaluate(system, "closed", "hello there")
    assert decision.decision == "deny"
    assert decision.rule_ids == ["judge.unavailable"]
    assert decision.judge is not None and decision.judge.outcome == "unavailable"


async def test_a_silent_judge_lets_the_request_on_flagged_where_the_tenant_fails_open(
    system: System,
) -> None:
    system.constitution("open", silent_judge("open"))
    system.script.then(Reply(text='{"violated": []}', delay=3))
    decision = await evaluate(system, "open", "hello there")
    assert decision.decision == "flag"
    assert decision.rule_ids == ["judge.unavailable"]


async def test_a_streamed_answer_names_its_constitution_on_the_finishing_chunk(
    system: System,
) -> None:
    expected = system.constitution("judged", PRINCIPLED)
    system.script.then(Reply(text='{"violated": []}'))
    async with httpx.AsyncClient(base_url=system.url, timeout=60) as client:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {system.keys['judged']}"},
            json={
                "model": "soma-local-dev",
                "messages": [{"role": "user", "content": "Name a colour, please."}],
                "use_memory": False,
                "stream": True,
            },
        ) as response:
            assert response.status_code == 200
            chunks = [
                msgspec.json.decode(line.removeprefix("data: "))
                async for line in response.aiter_lines()
                if line.startswith("data: {")
            ]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishing[-1]["constitution"] == expected
    assert all("constitution" not in c for c in chunks if c not in finishing)
