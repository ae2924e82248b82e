"""Every call is scoped to the caller's tenant, and every route to the roles that may use it."""

from __future__ import annotations

import httpx

from tests.gateway.serving import auth, eventually
from tests.gateway.standins import World


def token(world: World, tenant: str, roles: list[str], user: str = "someone") -> str:
    return world.identity.sign(world.identity.claims(tenant, user, roles))


async def test_a_task_of_tenant_b_is_not_found_for_tenant_a(
    http: httpx.AsyncClient, world: World
) -> None:
    b = auth(token(world, "tenant-b", ["member"]))
    a = auth(token(world, "tenant-a", ["member"]))
    created = await http.post("/v1/tasks", headers=b, json={"input": {"goal": "b's secret"}})
    task_id = created.json()["id"]
    assert (await http.get(f"/v1/tasks/{task_id}", headers=b)).status_code == 200

    for response in (
        await http.get(f"/v1/tasks/{task_id}", headers=a),
        await http.post(f"/v1/tasks/{task_id}/cancel", headers=a, json={}),
        await http.post(f"/v1/tasks/{task_id}/signal", headers=a, json={"name": "approve"}),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    listed = await http.get("/v1/tasks", headers=a)
    assert task_id not in [t["id"] for t in listed.json()["data"]]
    assert (await http.get(f"/v1/tasks/{task_id}", headers=b)).json()["state"] == "running"


async def test_a_memory_of_tenant_b_cannot_be_found_or_deleted_by_tenant_a(
    http: httpx.AsyncClient, world: World
) -> None:
    b = auth(token(world, "tenant-b", ["member"], user="bob"))
    a = auth(token(world, "tenant-a", ["admin"], user="alice"))
    added = await http.post("/v1/memory", headers=b, json={"text": "bob likes green tea"})
    memory_id = added.json()["id"]
    found = await http.post("/v1/memory/search", headers=a, json={"query": "green tea"})
    assert memory_id not in [m["id"] for m in found.json()["data"]]
    assert (await http.delete(f"/v1/memory/{memory_id}", headers=a)).status_code == 404
    found = await http.post("/v1/memory/search", headers=b, json={"query": "green tea"})
    assert memory_id in [m["id"] for m in found.json()["data"]]


async def test_a_member_reaches_only_their_own_memories(
    http: httpx.AsyncClient, world: World
) -> None:
    mine = auth(token(world, "acme", ["member"], user="mia"))
    response = await http.post(
        "/v1/memory/search", headers=mine, json={"query": "x", "user": "someone-else"}
    )
    assert response.status_code == 403


async def test_a_member_cannot_administer(http: httpx.AsyncClient, world: World) -> None:
    member = auth(token(world, "acme", ["member"]))
    assert (await http.get("/v1/admin/users", headers=member)).status_code == 403
    assert (await http.get("/v1/usage", headers=member)).status_code == 403
    response = await http.post("/v1/admin/tenants", headers=member, json={"id": "new"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_error"


async def test_a_tenant_admin_cannot_create_tenants(http: httpx.AsyncClient, world: World) -> None:
    admin = auth(token(world, "acme", ["admin"]))
    assert (
        await http.post("/v1/admin/tenants", headers=admin, json={"id": "x"})
    ).status_code == 403


async def test_an_operator_creates_a_tenant_whose_admin_creates_a_user_and_key(
    http: httpx.AsyncClient, world: World
) -> None:
    operator = auth(token(world, "platform", ["operator"]))
    created = await http.post("/v1/admin/tenants", headers=operator, json={"id": "globex"})
    assert created.status_code == 201
    again = await http.post("/v1/admin/tenants", headers=operator, json={"id": "globex"})
    assert again.status_code == 409

    admin = auth(token(world, "globex", ["admin"], user="hank"))
    user = await http.post(
        "/v1/admin/users", headers=admin, json={"name": "marge", "roles": ["member"]}
    )
    assert user.status_code == 201
    user_id = user.json()["id"]
    key = await http.post("/v1/admin/keys", headers=admin, json={"user_id": user_id, "name": "ci"})
    assert key.status_code == 201
    secret = key.json()["key"]
    assert secret.startswith("sk-soma-")
    assert (await http.get("/v1/models", headers=auth(secret))).status_code == 200

    listed = await http.get("/v1/admin/keys", headers=admin)
    assert [k["id"] for k in listed.json()["data"]] == [key.json()["id"]]
    assert "key" not in listed.json()["data"][0], "a listed key never shows its secret"
    assert user_id in [
        u["id"] for u in (await http.get("/v1/admin/users", headers=admin)).json()["data"]
    ]


async def test_an_admin_cannot_create_a_key_for_another_tenants_user(
    http: httpx.AsyncClient, world: World
) -> None:
    other_user = world.identity.user("tenant-b", "victim", ["member"])
    admin = auth(token(world, "tenant-a", ["admin"]))
    response = await http.post("/v1/admin/keys", headers=admin, json={"user_id": other_user.id})
    assert response.status_code == 404


async def test_an_admin_revokes_every_token_of_a_user(
    http: httpx.AsyncClient, world: World
) -> None:
    user = world.identity.user("acme", "leaver", ["member"])
    old = token(world, "acme", ["member"], user=user.id)
    assert (await http.get("/v1/models", headers=auth(old))).status_code == 200
    admin = auth(token(world, "acme", ["admin"]))
    response = await http.post(f"/v1/admin/users/{user.id}/revoke-tokens", headers=admin)
    assert response.json() == {"revoked": True}

    async def status() -> int:
        return (await http.get("/v1/models", headers=auth(old))).status_code

    assert await eventually(status, lambda code: code == 401) == 401


async def test_a_token_without_a_caller_role_is_forbidden(
    http: httpx.AsyncClient, world: World
) -> None:
    response = await http.get("/v1/models", headers=auth(token(world, "acme", ["auditor"])))
    assert response.status_code == 403
