"""Saga tests run on SQLite and on the real PostgreSQL, each with its own nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus import runtime
from bus.connection import connect
from bus.publish import envelope_for, publish
from bus.request import Requester
from kernel.db import make_engine
from kernel.settings import Settings
from sagas import queries
from sagas import runner as saga_runner
from schemas.envelope import new_id
from schemas.sagas import SagaCancel, SagaSignal, SagaStart
from tests.sagas.definitions import ALL
from tests.sagas.effects import Effects
from tests.servers import NatsServer, database, nats_server


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with database(request.param, tmp_path_factory.mktemp("sagas"), "kernel.db") as url:
        yield url


@pytest.fixture(scope="module")
def module_nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


def saga_settings(nats_url: str, database_url: str, data_dir: Path) -> Settings:
    return Settings(
        NATS_URL=nats_url,
        DATABASE_URL=database_url,
        SOMA_DATA_DIR=data_dir,
        SOMA_MAX_DELIVER=1,
        SOMA_RETRY_INITIAL=0.05,
        SOMA_ACK_WAIT=10,
    )


@dataclass
class Stack:
    settings: Settings
    effects: Effects
    requester: Requester
    db: Any

    async def start(self, saga_type: str, input: dict[str, Any] | None = None, **kw: Any) -> str:
        saga_id = kw.pop("saga_id", None) or new_id()
        cmd = SagaStart(saga_type=saga_type, saga_id=saga_id, input=input or {}, **kw)
        _, reply = await self.requester.request(
            cmd, tenant="acme", expect={"sagas.started"}, correlation_id=saga_id, timeout=20
        )
        if reply.schema != "sagas.started":
            raise RuntimeError(reply.payload.error)
        return saga_id

    async def signal(self, saga_id: str, name: str, payload: dict[str, Any] | None = None) -> None:
        cmd = SagaSignal(saga_id=saga_id, name=name, payload=payload or {})
        await publish(self.requester.bus, cmd, envelope_for(cmd, tenant="acme"))

    async def cancel(self, saga_id: str) -> None:
        cmd = SagaCancel(saga_id=saga_id, reason="test")
        await publish(self.requester.bus, cmd, envelope_for(cmd, tenant="acme"))

    async def finished(self, saga_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = await queries.get_instance(self.db, saga_id)
            if row and row["finished_at"] is not None:
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"saga {saga_id} did not finish: {await queries.get_instance(self.db, saga_id)}"
        )


@pytest.fixture(scope="module")
async def stack(
    module_nats: NatsServer, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = saga_settings(module_nats.url, database_url, tmp_path_factory.mktemp("data"))
    effects = Effects()
    tools = await runtime.start(effects.service(), settings)
    runner = await saga_runner.start(settings, ALL)
    nc = await connect(module_nats.url, "saga-tests")
    requester = Requester(nc, nc.jetstream())
    await requester.start()
    db = make_engine(database_url)
    yield Stack(settings, effects, requester, db)
    await requester.close()
    await nc.close()
    await runner.stop()
    await tools.stop()
    await db.dispose()
