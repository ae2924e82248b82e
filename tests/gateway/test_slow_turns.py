"""A turn that takes long: kept alive while it works, cut off (and cancelled) past the timeout."""

from __future__ import annotations

import httpx

from kernel.settings import Settings
from tests.gateway.serving import auth, eventually, gateway_config, served
from tests.gateway.standins import World

SLOW = {"model": "soma-test", "messages": [{"role": "user", "content": "answer slowly"}]}


async def test_a_quiet_stream_gets_keep_alive_comments_then_the_answer(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    config = gateway_config(SOMA_STREAM_KEEPALIVE_SECONDS=0.1)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        async with client.stream(
            "POST", "/v1/chat/completions", headers=auth(key), json={**SLOW, "stream": True}
        ) as response:
            body = (await response.aread()).decode()
    assert ": keep-alive" in body
    assert "Echo: answer slowly" not in body.split(": keep-alive")[0]
    assert body.rstrip().endswith("data: [DONE]")


async def test_a_turn_past_the_timeout_is_504_and_cancelled(
    gw_settings: Settings, world: World
) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    config = gateway_config(SOMA_CHAT_TIMEOUT=0.2)
    cancelled_before = len(world.sagas.cancelled)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", headers=auth(key), json=SLOW)
        async with client.stream(
            "POST", "/v1/chat/completions", headers=auth(key), json={**SLOW, "stream": True}
        ) as streamed:
            events = (await streamed.aread()).decode()
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert "event: error" in events and '"code":"timeout"' in events
    assert "[DONE]" not in events

    async def cancellations() -> int:
        return len(world.sagas.cancelled) - cancelled_before

    assert await eventually(cancellations, lambda n: n == 2) == 2
