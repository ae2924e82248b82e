"""``Idempotency-Key``: a retried POST gets the first answer instead of doing the work again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from bus.connection import connect
from gateway.idempotency import IdempotencyMiddleware, Record, _Lease, open_bucket
from kernel.settings import Settings
from tests.gateway.conftest import REDIS_URL
from tests.gateway.serving import auth, gateway_config, served
from tests.gateway.standins import World
from tests.servers import require_service

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
    started = [t for (_, _), t in world.sagas.tasks.items() if t.input.get("goal") == "once"]
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


SLOW_CHAT = {"model": "soma-test", "messages": [{"role": "user", "content": "answer slowly"}]}


async def _both(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> list[httpx.Response]:
    """The first request, and its retry sent while the first still runs."""
    first = asyncio.create_task(client.post(url, headers=headers, json=SLOW_CHAT))
    await asyncio.sleep(0.2)
    assert not first.done()
    retry = await client.post(url, headers=headers, json=SLOW_CHAT)
    return [await first, retry]


async def test_a_retry_while_the_first_request_runs_waits_for_its_answer(
    http: httpx.AsyncClient, member_key: str
) -> None:
    headers = {**auth(member_key), "Idempotency-Key": "wait-for-me"}
    first, retry = await _both(http, "/v1/chat/completions", headers)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"


async def test_a_retry_waits_through_redis_on_another_replica(
    gw_settings: Settings, world: World, member_key: str, redis_url: str
) -> None:
    settings = gw_settings.model_copy(update={"redis_url": redis_url})
    config = gateway_config()
    headers = {**auth(member_key), "Idempotency-Key": "wait-elsewhere"}
    async with served(settings, config) as one, served(settings, config) as two:
        async with httpx.AsyncClient(timeout=15) as client:
            first = asyncio.create_task(
                client.post(f"{one}/v1/chat/completions", headers=headers, json=SLOW_CHAT)
            )
            await asyncio.sleep(0.2)
            retry = await client.post(f"{two}/v1/chat/completions", headers=headers, json=SLOW_CHAT)
            answered = await first
    assert answered.status_code == retry.status_code == 200
    assert retry.json() == answered.json()


async def test_a_retry_still_waiting_at_its_limit_is_409(
    gw_settings: Settings, world: World, member_key: str
) -> None:
    headers = {**auth(member_key), "Idempotency-Key": "too-impatient"}
    config = gateway_config(SOMA_IDEMPOTENCY_WAIT_SECONDS=0.1)
    async with served(gw_settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        first, retry = await _both(client, "/v1/chat/completions", headers)
    assert first.status_code == 200
    assert retry.status_code == 409
    assert retry.json()["error"]["code"] == "idempotency_key_in_use"


@pytest.mark.parametrize("store", ["bus", "redis"])
async def test_a_completed_record_outlives_the_gateway(
    gw_settings: Settings, world: World, member_key: str, store: str
) -> None:
    settings = gw_settings
    if store == "redis":
        settings = gw_settings.model_copy(update={"redis_url": redis_service()})
    config = gateway_config()
    headers = {**auth(member_key), "Idempotency-Key": f"restart-{store}"}
    async with served(settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.post("/v1/tasks", headers=headers, json={"input": {"goal": store}})
    async with served(settings, config) as url, httpx.AsyncClient(base_url=url) as client:
        replayed = await client.post("/v1/tasks", headers=headers, json={"input": {"goal": store}})
    assert first.status_code == replayed.status_code == 202
    assert replayed.json() == first.json()
    assert replayed.headers["idempotent-replayed"] == "true"


async def test_a_reservation_whose_lease_lapsed_is_taken_over_and_run(
    gw_settings: Settings, world: World, member_key: str
) -> None:
    body = {"input": {"goal": "orphaned"}}
    fingerprint = hashlib.sha256(json.dumps(body).encode()).hexdigest()
    key = hashlib.sha256("\0".join(("acme", "orphan", "/v1/tasks")).encode()).hexdigest()
    nc = await connect(gw_settings.nats_url or "", "idempotency-test")
    try:
        store = await open_bucket(nc.jetstream(), 3600)
        dead = Record(fingerprint, owner="a-gateway-that-died", lease_until=time.time() - 1)
        assert await store.create(key, dead) is not None
        async with served(gw_settings, gateway_config()) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post(
                    "/v1/tasks",
                    headers={
                        **auth(member_key),
                        "Idempotency-Key": "orphan",
                        "Content-Type": "application/json",
                    },
                    content=json.dumps(body),
                )
        found = await store.read(key)
    finally:
        await nc.close()
    assert response.status_code == 202
    assert found is not None and found[0].status == 202
    assert [t for (_, _), t in world.sagas.tasks.items() if t.input.get("goal") == "orphaned"]


def redis_service() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL


async def test_a_memory_added_again_by_a_takeover_is_the_same_memory(
    gw_settings: Settings, world: World, member_key: str
) -> None:
    body = {"text": "the office moved to the third floor"}
    fingerprint = hashlib.sha256(json.dumps(body).encode()).hexdigest()
    key = hashlib.sha256("\0".join(("acme", "add-once", "/v1/memory")).encode()).hexdigest()
    headers = {
        **auth(member_key),
        "Idempotency-Key": "add-once",
        "Content-Type": "application/json",
    }
    nc = await connect(gw_settings.nats_url or "", "idempotency-test")
    answers = []
    try:
        store = await open_bucket(nc.jetstream(), 3600)
        async with served(gw_settings, gateway_config()) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                for _ in range(2):  # each time the reservation looks like a dead gateway's
                    found = await store.read(key)
                    if found is not None:
                        await store.remove(key, found[1])
                    dead = Record(fingerprint, owner="dead", lease_until=time.time() - 1)
                    assert await store.create(key, dead) is not None
                    answer = await client.post(
                        "/v1/memory", headers=headers, content=json.dumps(body)
                    )
                    answers.append(answer.json())
    finally:
        await nc.close()
    assert answers[0]["id"] == answers[1]["id"]
    assert [a["created"] for a in answers] == [True, False]


class MemoryStore:
    """The store's contract in a dict: a token is the key's revision."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[Record, int]] = {}
        self._revision = 0

    def _put(self, key: str, record: Record) -> int:
        self._revision += 1
        self.records[key] = (record, self._revision)
        return self._revision

    async def create(self, key: str, record: Record) -> int | None:
        return None if key in self.records else self._put(key, record)

    async def read(self, key: str) -> tuple[Record, int] | None:
        return self.records.get(key)

    async def replace(self, key: str, token: Any, record: Record) -> int | None:
        found = self.records.get(key)
        return self._put(key, record) if found and found[1] == token else None

    async def remove(self, key: str, token: Any) -> None:
        found = self.records.get(key)
        if found and found[1] == token:
            del self.records[key]


async def _post_through_middleware(store: MemoryStore, status: int) -> list[Any]:
    """One POST with an Idempotency-Key to an app answering ``status`` in two parts; for each
    message the caller is sent, what the store holds at that moment."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
        await send({"type": "http.response.body", "body": b'"t-1"}', "more_body": False})

    async def authenticate(credential: str | None) -> Any:
        return SimpleNamespace(tenant="acme")

    gateway = SimpleNamespace(
        authenticator=SimpleNamespace(authenticate=authenticate),
        config=SimpleNamespace(idempotency_lease=15, idempotency_wait=1),
        idempotency=store,
    )
    middleware = IdempotencyMiddleware(app, SimpleNamespace(gateway=gateway))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tasks",
        "headers": [(b"authorization", b"Bearer k"), (b"idempotency-key", b"k")],
    }
    messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}])
    hung_up = asyncio.Event()

    async def receive() -> Message:
        for message in messages:
            return message
        await hung_up.wait()
        return {"type": "http.disconnect"}

    seen: list[Any] = []

    async def send(message: Message) -> None:
        seen.append([found for found, _ in store.records.values()])

    await middleware(scope, receive, send)
    return seen


async def test_the_record_is_stored_before_the_caller_has_the_whole_answer() -> None:
    store = MemoryStore()
    seen = await _post_through_middleware(store, 201)
    assert [len(records) for records in seen] == [1, 1, 1]
    assert [records[0].pending for records in seen] == [True, True, False]
    done = seen[-1][0]
    assert (done.status, done.body) == (201, b'{"id":"t-1"}')


async def test_an_answer_not_stored_frees_the_key_before_the_caller_has_it() -> None:
    store = MemoryStore()
    seen = await _post_through_middleware(store, 500)
    assert [len(records) for records in seen] == [1, 1, 0]


class SlowToAnswerStore(MemoryStore):
    """Applies a replace at once but answers it only when ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.applied = asyncio.Event()
        self.answer = asyncio.Event()

    async def replace(self, key: str, token: Any, record: Record) -> int | None:
        done = await super().replace(key, token, record)
        self.applied.set()
        await self.answer.wait()
        return done


async def test_stopping_a_lease_lets_a_renewal_under_way_finish() -> None:
    store = SlowToAnswerStore()
    pending = Record("f", owner="me", lease_until=time.time() + 0.03)
    token = await store.create("k", pending)
    lease = _Lease(store, "k", pending, token, 0.03, takeover=False)
    lease.start()
    await store.applied.wait()  # a renewal is written, its answer not yet back
    stopping = asyncio.create_task(lease.stop())
    await asyncio.sleep(0)
    store.answer.set()
    await stopping
    await lease.complete(Record("f", status=202))
    assert store.records["k"][0].status == 202
