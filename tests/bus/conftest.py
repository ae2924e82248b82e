"""Bus tests get a clean nats-server each, so streams and consumers start empty."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js import JetStreamContext

from bus.connection import connect
from bus.service import Connected
from bus.streams import provision
from kernel.settings import Settings
from tests.servers import NatsServer, nats_server


@pytest.fixture
def fresh_nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server


@pytest.fixture
def settings(fresh_nats: NatsServer, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        NATS_URL=fresh_nats.url,
        SOMA_DATA_DIR=tmp_path,
        SOMA_MAX_DELIVER=3,
        SOMA_RETRY_INITIAL=0.05,
        SOMA_RETRY_MAXIMUM=0.2,
        SOMA_ACK_WAIT=5,
    )


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Connected]:
    nc = await connect(settings.nats_url or "", "test")
    js = nc.jetstream()
    await provision(js, settings)
    yield Connected(nc, js)
    await nc.close()


@pytest.fixture
def js(bus: Connected) -> JetStreamContext:
    return bus.js
