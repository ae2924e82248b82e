"""No way around policy: every tool call is authorized where the tool runs, memory stays the
caller's own. Every process of the system runs as its own OS process on PostgreSQL and a
nats-server of its own; the attacks go through the HTTP gateway or straight onto the bus, and what
did or did not happen is read from the tools' call records and the bus events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import select

from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from handlers.tools.calls import calls
from kernel.db import make_engine
from schemas.chat import ChatTurnInput, ChatTurnResult
from schemas.common import CommandFailed
from schemas.memory import MemoryRecall
from schemas.sagas import SagaStart
from schemas.slm import ChatMessage, ToolSpec
from schemas.tools import ToolInvoke, ToolResult
from tests.e2e.conftest import wait_for_consumers
from tests.servers import (
    NatsServer,
    create_key,
    free_port,
    nats_server,
    postgres_database,
    stop_processes,
)

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ["policy", "memory", "slm", "tools", "sagas", "identity", "gateway"]
TENANT = "acme"
ENDED = {"completed", "failed", "compensated", "compensation_failed", "cancelled"}

PYTHON_SPEC: dict[str, Any] = {
    "name": "python",
    "description": "Run Python code",
    "parameters": {
        "type": "object",
        "properties": {"code": {"type": "string"}},
        "required": ["code"],
    },
}
# A goal whose plan has one step that names python, so the model calls the tool.
PYTHON_GOAL = "Research\n1. Run python to print 42"


@dataclass
class System:
    nats: NatsServer
    database_url: str
    base: str
    keys: dict[str, str]


def _wait_for_gateway(base: str, key: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the gateway did not answer within 90 s")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data = tmp_path_factory.mktemp("policy-bypass")
    port = free_port()
    with nats_server() as server, postgres_database() as database_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NATS_URL": server.url,
            "DATABASE_URL": database_url,
            "SOMA_DATA_DIR": str(data),
            "SOMA_RETRY_INITIAL": "0.2",
            "SOMA_HTTP_PORT": str(port),
            "SOMA_RATE_RPM": "0",
            "SOMA_RATE_TPM": "0",
        }
        env.pop("SOMA_POLICY_DIR", None)
        subprocess.run(
            [sys.executable, "-m", "soma.cli", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        keys = {
            "alice": create_key(env, TENANT, "alice"),
            "bob": create_key(env, TENANT, "bob"),
            "root": create_key(env, TENANT, "root", "admin"),
        }
        procs = [
            subprocess.Popen([sys.executable, "-m", "soma.cli", "run", name], env=env, cwd=ROOT)
            for name in PROCESSES
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for_gateway(base, keys["root"])
            yield System(server, database_url, base, keys)
        finally:
            stop_processes(procs)


@pytest.fixture(scope="module")
async def requester(system: System) -> AsyncIterator[Requester]:
    nc = await connect(system.nats.url, "policy-bypass")
    await wait_for_consumers(nc.jetstream(), ["tools", "memory", "sagas-events"])
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    yield requester
    await requester.close()
    await nc.close()


@pytest.fixture
async def http(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
async def alice_id(system: System) -> str:
    """Alice's user id, as her credential names her (what the memories she stores carry)."""
    async with httpx.AsyncClient(base_url=system.base, timeout=120) as http:
        added = await http.post(
            "/v1/memory", json={"text": "alice was here"}, headers=as_(system, "alice")
        )
        assert added.status_code == 201, added.text
        (hit,) = await search(http, system, "alice", "alice was here", top_k=1)
    return str(hit["user"])


def as_(system: System, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.keys[who]}"}


async def tool_calls(system: System, prefix: str) -> list[tuple[str, str]]:
    """(name, status) of every call the tools process took on whose id starts with ``prefix``."""
    engine = make_engine(system.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(calls.c.name, calls.c.status).where(
                    calls.c.tenant == TENANT, calls.c.call_id.startswith(prefix)
                )
            )
            return [(row.name, row.status) for row in rows]
    finally:
        await engine.dispose()


async def run_task(
    http: httpx.AsyncClient, system: System, who: str, task: dict[str, Any]
) -> dict[str, Any]:
    created = await http.post("/v1/tasks", json={"input": task}, headers=as_(system, who))
    assert created.status_code == 202, created.text
    task_id = created.json()["id"]
    async with asyncio.timeout(180):
        while True:
            answer = (await http.get(f"/v1/tasks/{task_id}", headers=as_(system, who))).json()
            if answer["state"] in ENDED:
                return dict(answer)
            await asyncio.sleep(0.3)


async def chat(
    http: httpx.AsyncClient, system: System, who: str, text: str, **extra: Any
) -> httpx.Response:
    return await http.post(
        "/v1/chat/completions",
        json={"model": "soma-local-dev", "messages": [{"role": "user", "content": text}], **extra},
        headers=as_(system, who),
    )


async def search(
    http: httpx.AsyncClient, system: System, who: str, query: str, **extra: Any
) -> list[dict[str, Any]]:
    found = await http.post(
        "/v1/memory/search", json={"query": query, **extra}, headers=as_(system, who)
    )
    assert found.status_code == 200, found.text
    return list(found.json()["data"])


async def listing(http: httpx.AsyncClient, system: System, who: str) -> list[dict[str, Any]]:
    listed = await http.get("/v1/memory", params={"limit": 1000}, headers=as_(system, who))
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


# ----------------------------------------------------------------------------- tools


async def test_a_member_naming_python_as_a_tool_spec_in_a_task_runs_no_python(
    http: httpx.AsyncClient, system: System
) -> None:
    task = await run_task(
        http, system, "alice", {"goal": PYTHON_GOAL, "max_steps": 1, "tools": [PYTHON_SPEC]}
    )
    assert task["state"] == "completed", task["error"]
    assert await tool_calls(system, task["id"]) == []
    (note,) = task["result"]["notes"]
    assert "python is not a platform tool of this task; it was not run" in note


async def test_a_member_asking_for_python_as_a_platform_tool_is_refused_whatever_role_it_claims(
    http: httpx.AsyncClient, system: System
) -> None:
    task = await run_task(
        http,
        system,
        "alice",
        {"goal": PYTHON_GOAL, "max_steps": 1, "platform_tools": [PYTHON_SPEC], "role": "admin"},
    )
    assert task["state"] == "completed", task["error"]
    assert task["input"]["role"] == "member"
    assert await tool_calls(system, task["id"]) == []
    (note,) = task["result"]["notes"]
    assert (
        "python was refused by policy (tool.not_allowed): role 'member' may not call tool 'python'"
        in note
    )


async def test_an_admin_asking_for_python_as_a_platform_tool_reaches_the_tool(
    http: httpx.AsyncClient, system: System
) -> None:
    """The control: the same task by a role the allow-list names does reach the tools process."""
    task = await run_task(
        http, system, "root", {"goal": PYTHON_GOAL, "max_steps": 1, "platform_tools": [PYTHON_SPEC]}
    )
    assert task["state"] == "completed", task["error"]
    assert await tool_calls(system, task["id"]) == [("python", "done")]


@pytest.mark.parametrize("role", ["member", None])
async def test_a_python_call_published_on_the_bus_without_a_granted_role_is_refused(
    requester: Requester, system: System, role: str | None
) -> None:
    call_id = f"bus-{uuid.uuid4().hex}"
    _, reply = await requester.request(
        ToolInvoke(call_id=call_id, name="python", arguments={"code": "print(42)"}, role=role),
        tenant=TENANT,
        expect={"tools.result"},
        timeout=60,
    )
    result = reply.payload
    assert isinstance(result, ToolResult)
    assert (result.ok, result.refused_by, result.output) == (False, "tool.not_allowed", None)
    assert "refused by policy (tool.not_allowed)" in (result.error or "")
    assert await tool_calls(system, call_id) == []


async def test_a_chat_tool_spec_named_python_comes_back_to_the_caller_unrun(
    http: httpx.AsyncClient, system: System
) -> None:
    answer = await chat(
        http,
        system,
        "root",
        "Run python to print 42",
        tools=[{"type": "function", "function": PYTHON_SPEC}],
        tool_choice="required",
    )
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "python"
    saga_id = answer.json()["id"].removeprefix("chatcmpl-")
    assert await tool_calls(system, saga_id) == []


async def test_a_callers_spec_shadows_the_platform_tool_of_the_same_name(
    requester: Requester, system: System
) -> None:
    spec = msgspec.convert(PYTHON_SPEC, ToolSpec)
    turn = ChatTurnInput(
        model="soma-local-dev",
        messages=[ChatMessage(role="user", content="Run python to print 42")],
        tools=[spec],
        platform_tools=[spec],
        role="admin",
        use_memory=False,
    )
    saga_id = uuid.uuid4().hex
    seen: list[str] = []
    async with requester.watching(saga_id) as events:
        cmd = SagaStart(saga_type="chat_turn", saga_id=saga_id, input=msgspec.to_builtins(turn))
        await publish(requester.bus, cmd, envelope_for(cmd, tenant=TENANT, correlation_id=saga_id))
        async with asyncio.timeout(60):
            while (event := await events.get()).schema != "sagas.finished":
                seen.append(event.schema)
    result = msgspec.convert(event.payload.result, ChatTurnResult)
    assert result.finish_reason == "tool_calls"
    assert "tools.result" not in seen
    assert await tool_calls(system, saga_id) == []


# ----------------------------------------------------------------------------- memory


async def test_another_member_recalls_nothing_of_a_members_chat_memory(
    http: httpx.AsyncClient, system: System
) -> None:
    secret = f"locker {uuid.uuid4().hex[:8]}"
    told = await chat(http, system, "alice", f"Remember: my {secret} code is 4711")
    assert told.status_code == 200, told.text

    own = await chat(http, system, "alice", f"What is my {secret} code?")
    other = await chat(http, system, "bob", f"What is my {secret} code?")
    assert "4711" in own.json()["choices"][0]["message"]["content"]
    assert "4711" not in other.json()["choices"][0]["message"]["content"]
    # Bob's own question is his memory now; Alice's answer is not.
    assert any("4711" in hit["text"] for hit in await search(http, system, "alice", secret))
    assert not any("4711" in hit["text"] for hit in await search(http, system, "bob", secret))


async def test_a_member_naming_another_user_in_a_memory_search_is_forbidden(
    http: httpx.AsyncClient, system: System, alice_id: str
) -> None:
    answer = await http.post(
        "/v1/memory/search",
        json={"query": "alice was here", "user": alice_id},
        headers=as_(system, "bob"),
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["type"] == "permission_error"


async def test_a_members_recall_published_on_the_bus_for_another_user_is_refused_by_memory(
    requester: Requester, alice_id: str
) -> None:
    _, reply = await requester.request(
        MemoryRecall(query="alice was here", user=alice_id, caller_role="member"),
        tenant=TENANT,
        expect={"memory.recalled"},
        actor="bob",
        timeout=60,
    )
    assert isinstance(reply.payload, CommandFailed)
    assert reply.payload.code == "forbidden"
    assert reply.payload.error.startswith("memory.other_user")


async def test_a_role_granted_tenant_wide_memory_recalls_every_members_chat_memory(
    http: httpx.AsyncClient, system: System
) -> None:
    secret = f"vault {uuid.uuid4().hex[:8]}"
    told = await chat(http, system, "alice", f"Remember: the {secret} opens with 8086")
    assert told.status_code == 200, told.text

    recalled = await chat(http, system, "root", f"How does the {secret} open?")
    assert "8086" in recalled.json()["choices"][0]["message"]["content"]
    (own,) = [h for h in await search(http, system, "alice", secret) if "8086" in h["text"]]
    hits = await search(http, system, "root", secret, user=own["user"])
    assert [h["id"] for h in hits if "8086" in h["text"]] == [own["id"]]


async def test_a_member_naming_someone_else_as_chat_user_is_refused(
    http: httpx.AsyncClient, system: System, alice_id: str
) -> None:
    answer = await chat(http, system, "bob", "What do you know about me?", user=alice_id)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("permission_error", "user")


async def test_a_chat_stored_memory_is_listed_found_and_deleted_through_v1_memory(
    http: httpx.AsyncClient, system: System
) -> None:
    secret = f"parcel {uuid.uuid4().hex[:8]}"
    told = await chat(http, system, "alice", f"Remember: the {secret} arrives on Tuesday")
    assert told.status_code == 200, told.text
    turn_id = told.json()["id"].removeprefix("chatcmpl-")
    # The turn answers before it stores its memory; the listing shows it once stored.
    deadline = time.monotonic() + 15
    while not (listed := [m for m in await listing(http, system, "alice") if secret in m["text"]]):
        assert time.monotonic() < deadline, "the chat turn's memory never appeared in the listing"
        await asyncio.sleep(0.1)
    assert [m["id"] for m in listed] == [turn_id]
    assert not any(secret in m["text"] for m in await listing(http, system, "bob"))
    (hit,) = [h for h in await search(http, system, "alice", secret) if secret in h["text"]]
    assert hit["id"] == turn_id

    not_bobs = await http.delete(f"/v1/memory/{hit['id']}", headers=as_(system, "bob"))
    assert not_bobs.status_code == 404, not_bobs.text
    deleted = await http.delete(f"/v1/memory/{hit['id']}", headers=as_(system, "alice"))
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == 1
    assert not any(secret in h["text"] for h in await search(http, system, "alice", secret))
