"""What a connection logs: closing it is quiet, losing the server is not."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bus.connection import connect
from tests.servers import nats_server


async def test_closing_a_connection_logs_no_reconnect_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with nats_server() as server:
        nc = await connect(server.url, "closing")
        with caplog.at_level(logging.INFO, logger="soma.bus"):
            await nc.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_lost_server_is_still_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with nats_server() as server:
        nc = await connect(server.url, "losing")
        with caplog.at_level(logging.INFO, logger="soma.bus"):
            await asyncio.to_thread(server.stop)
            for _ in range(100):
                if any("reconnecting" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
    await nc.close()
    assert any(
        r.levelno == logging.WARNING and "disconnected" in r.getMessage() for r in caplog.records
    )
