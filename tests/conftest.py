"""Session fixtures: one real nats-server from the wheel for the whole run."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from bus.connection import connect
from bus.service import Connected
from tests.servers import NatsServer, nats_server

# Every `soma up` records where it runs in the user's config folder (soma/system.py): the tests'
# systems record themselves in a folder of this run's own, never in the developer's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="soma-test-config-")


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
