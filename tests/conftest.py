"""Session fixtures: one real nats-server from the wheel for the whole run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import NatsServer, nats_server


@pytest.fixture(scope="session")
def nats() -> Iterator[NatsServer]:
    with nats_server() as server:
        yield server
