"""Gateways for tests: served by uvicorn on a free port inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import uvicorn

from gateway.app import create_app
from gateway.config import GatewayConfig
from kernel.settings import Settings
from tests.servers import free_port

T = TypeVar("T")


def gateway_config(**overrides: Any) -> GatewayConfig:
    """Generous limits, short caches and timeouts, a Redis prefix of its own, and chat turns
    run as the ``chat_turn`` saga, whose contract the stand-ins answer (direct turns send the
    handlers' own commands: tests/e2e/test_direct.py runs them against the real handlers)."""
    values: dict[str, Any] = {
        "SOMA_CHAT_PIPELINE": "full",
        "SOMA_RATE_RPM": 10_000,
        "SOMA_RATE_TENANT_RPM": 100_000,
        "SOMA_API_KEY_CACHE_SECONDS": 0.5,
        "SOMA_BUS_TIMEOUT": 5,
        "SOMA_CHAT_TIMEOUT": 10,
        "SOMA_MAX_BODY_BYTES": 64 * 1024,
        "SOMA_REDIS_PREFIX": f"soma-test:{uuid.uuid4().hex}:",
    }
    values.update(overrides)
    return GatewayConfig(**values)


@contextlib.asynccontextmanager
async def served(
    settings: Settings, config: GatewayConfig, clock: Callable[[], float] | None = None
) -> AsyncIterator[str]:
    """A gateway until the block ends; yields its base URL. ``clock``: what budgets' windows
    are judged by (default: the time)."""
    port = free_port()
    app = create_app(settings, config) if clock is None else create_app(settings, config, clock)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the gateway stopped during startup")
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def auth(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def eventually(
    fetch: Callable[[], Awaitable[T]], until: Callable[[T], bool], seconds: float = 5
) -> T:
    """Poll ``fetch`` until ``until`` holds (or time is up); returns the last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await fetch()
        if until(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.02)
