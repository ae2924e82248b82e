"""Session fixtures: one real nats-server from the wheel for the whole run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bus.connection import connect
from bus.service import Connected
from tests.servers import NatsServer, nats_server


@pytest.fixture(scope="session")
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture(scope="session")
async def connected(nats: NatsServer) -> AsyncIterator[Connected]:
    """What the runtime hands a service's startup hooks, for tests that run the hooks themselves."""
    nc = await connect(nats.url, "startup-hooks")
    yield Connected(nc, nc.jetstream())
    await nc.close()
