"""``Idempotency-Key``: a retried POST gets the first answer instead of doing the work again."""

from __future__ import annotations

import httpx

from soma.settings import Settings
from tests.gateway.serving import auth, gateway_config, served
from tests.gateway.standins import World

TASK = {"input": {"goal": "write a report"}}


async def test_a_retried_post_replays_the_first_response(
    http: httpx.AsyncClient, member_key: str, world: World
) -> None:
    headers = {**auth(member_key), "Idempotency-Key": "task-once"}
    first = await http.post("/v1/tasks", headers=headers, json={"input": {"goal": "once"}})
    second = await http.post("/v1/tasks", headers=headers, json={"input": {"goal": "once"}})
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    started = [t for (_, _), t in world.sagas.tasks.items() if t.input == {"goal": "once"}]
    assert len(started) == 1


async def test_the_same_key_with_another_body_is_refused(
    http: httpx.AsyncClient, member_key: str
) -> None:
    headers = {**auth(member_key), "Idempotency-Key": "reused"}
    await http.post("/v1/tasks", headers=headers, json={"input": {"goal": "one"}})
    response = await http.post("/v1/tasks", headers=headers, json={"input": {"goal": "two"}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"


async def test_keys_are_separate_per_tenant(http: httpx.AsyncClient, world: World) -> None:
    a = auth(world.identity.sign(world.identity.claims("idem-a", "u", ["member"])))
    b = auth(world.identity.sign(world.identity.claims("idem-b", "u", ["member"])))
    first = await http.post("/v1/tasks", headers={**a, "Idempotency-Key": "k"}, json=TASK)
    other = await http.post("/v1/tasks", headers={**b, "Idempotency-Key": "k"}, json=TASK)
    assert first.json()["id"] != other.json()["id"]


async def test_a_refused_request_is_not_remembered(http: httpx.AsyncClient, world: World) -> None:
    key, _ = world.identity.api_key("acme", ["member"])
    headers = {**auth(key), "Idempotency-Key": "after-a-403"}
    refused = await http.post("/v1/admin/users", headers=headers, json={"name": "x"})
    assert refused.status_code == 403
    created = await http.post("/v1/tasks", headers=headers, json=TASK)
    assert created.status_code == 202


async def test_replicas_share_idempotency_records_through_redis(
    gw_settings: Settings, world: World, member_key: str, redis_url: str
) -> None:
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config()
    headers = {**auth(member_key), "Idempotency-Key": "shared"}
    async with served(settings, config) as one, served(settings, config) as two:
        async with httpx.AsyncClient() as client:
            first = await client.post(f"{one}/v1/tasks", headers=headers, json=TASK)
            second = await client.post(f"{two}/v1/tasks", headers=headers, json=TASK)
    assert first.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
