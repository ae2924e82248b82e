"""The memory process on a real nats-server: commands in, events out, redelivery harmless."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from bus import runtime
from bus.connection import connect
from bus.request import Requester
from handlers.memory.config import MemoryConfig
from handlers.memory.service import build
from kernel.settings import Settings
from schemas.common import CommandFailed
from schemas.memory import MemoryRecall, MemoryRecalled, MemoryStore, MemoryStored
from tests.servers import NatsServer, nats_server


@pytest.fixture(scope="module")
def bus_server() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="module")
async def requester(
    bus_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Requester]:
    settings = Settings.model_validate(
        {
            "NATS_URL": bus_server.url,
            "SOMA_DATA_DIR": tmp_path_factory.mktemp("memory-bus"),
            "DATABASE_URL": None,
            "QDRANT_URL": None,
        }
    )
    config = MemoryConfig.model_validate(
        {"SOMA_EMBEDDINGS": "hashed-ngrams", "SOMA_MEMORY_COLLECTION": "soma_memory"}
    )
    running = await runtime.start(build(settings, config), settings)
    nc = await connect(bus_server.url, "memory-test")
    caller = Requester(nc, nc.jetstream())
    await caller.start()
    yield caller
    await caller.close()
    await nc.close()
    await running.stop()


async def test_a_turn_stored_twice_over_the_bus_is_created_once_and_recalled(requester) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    turn = MemoryStore(turn_id="turn-7", text="The staging database moved to Frankfurt")
    _, first = await requester.request(turn, tenant=tenant, expect={"memory.stored"}, timeout=20)
    _, again = await requester.request(turn, tenant=tenant, expect={"memory.stored"}, timeout=20)
    assert isinstance(first.payload, MemoryStored) and first.payload.created
    assert isinstance(again.payload, MemoryStored) and not again.payload.created

    _, recalled = await requester.request(
        MemoryRecall(query="where did the staging database move"),
        tenant=tenant,
        expect={"memory.recalled"},
        timeout=20,
    )
    assert isinstance(recalled.payload, MemoryRecalled)
    assert [item.id for item in recalled.payload.items] == ["turn-7"]


async def test_a_blank_turn_fails_without_retrying(requester) -> None:
    _, reply = await requester.request(
        MemoryStore(turn_id="blank", text=" "),
        tenant=f"t{uuid.uuid4().hex[:10]}",
        expect={"memory.stored"},
        timeout=20,
    )
    assert reply.schema == "memory.failed"
    assert isinstance(reply.payload, CommandFailed)
    assert "empty" in reply.payload.error
