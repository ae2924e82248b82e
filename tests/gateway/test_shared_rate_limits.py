"""Rate limits held in Redis bind every gateway replica together."""

from __future__ import annotations

import httpx

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
