"""Rate limits held in Redis bind every gateway replica together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httpx
from redis.asyncio import Redis

from kernel.settings import Settings
from tests.gateway.serving import auth, gateway_config, served
from tests.gateway.standins import World


async def test_two_gateways_share_the_per_key_request_limit(
    gw_settings: Settings, world: World, redis_url: str
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config(SOMA_RATE_RPM=3)
    async with served(settings, config) as one, served(settings, config) as two:
        async with httpx.AsyncClient(headers=auth(key)) as client:
            statuses = [
                (await client.get(f"{url}/v1/models")).status_code for url in (one, two, one)
            ]
            refused = await client.get(f"{two}/v1/models")
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_the_tenant_limit_binds_all_keys_of_the_tenant(
    gw_settings: Settings, world: World, redis_url: str
) -> None:
    keys = [world.identity.api_key("crowded", ["member"])[0] for _ in range(3)]
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config(SOMA_RATE_RPM=10, SOMA_RATE_TENANT_RPM=2)
    async with served(settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        statuses = [(await client.get("/v1/models", headers=auth(k))).status_code for k in keys]
    assert statuses == [200, 200, 429]


async def test_a_spent_token_budget_refuses_the_next_completion(
    gw_settings: Settings, world: World, redis_url: str
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    body = {
        "model": "soma-test",
        "messages": [{"role": "user", "content": "six words in this one"}],
    }
    async with served(settings, gateway_config(SOMA_RATE_TPM=10)) as url:
        async with httpx.AsyncClient(base_url=url, headers=auth(key)) as client:
            first = await client.post("/v1/chat/completions", json=body)
            second = await client.post("/v1/chat/completions", json=body)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] > 10
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "tokens"


UNLIMITED = {
    "SOMA_RATE_RPM": 0,
    "SOMA_RATE_TENANT_RPM": 0,
    "SOMA_RATE_TPM": 0,
    "SOMA_RATE_TENANT_TPM": 0,
}
BODY = {"model": "soma-test", "messages": [{"role": "user", "content": "hello there"}]}


async def _calls(redis_url: str, prefix: str, requests: Callable[[], Awaitable[None]]) -> list[str]:
    """The commands the gateway sent Redis about ``prefix``'s counters while ``requests`` ran."""
    seen: list[str] = []
    redis = Redis.from_url(redis_url)
    try:
        async with redis.monitor() as monitor:
            listening = asyncio.Event()

            async def listen() -> None:
                listening.set()
                async for line in monitor.listen():
                    if prefix in line["command"] and "lua" not in line.get("client_type", ""):
                        seen.append(line["command"].split(" ")[0].upper())

            listener = asyncio.create_task(listen())
            await listening.wait()
            await asyncio.sleep(0.1)
            await requests()
            await asyncio.sleep(0.2)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
    finally:
        await redis.aclose()
    return seen


async def test_an_unlimited_caller_costs_no_round_trip_to_redis(
    gw_settings: Settings, world: World, redis_url: str
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config(**UNLIMITED)
    async with served(settings, config) as url:
        async with httpx.AsyncClient(base_url=url, headers=auth(key)) as client:

            async def requests() -> None:
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200

            calls = await _calls(redis_url, config.redis_prefix, requests)
    assert calls == []


async def test_a_completion_is_admitted_in_one_round_trip_and_counted_in_one_more(
    gw_settings: Settings, world: World, redis_url: str
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config(SOMA_RATE_TPM=100_000, SOMA_RATE_TENANT_TPM=1_000_000)
    async with served(settings, config) as url:
        async with httpx.AsyncClient(base_url=url, headers=auth(key)) as client:

            async def requests() -> None:
                assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200

            calls = await _calls(redis_url, config.redis_prefix, requests)
    assert len(calls) == 2, calls
