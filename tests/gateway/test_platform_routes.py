"""Tasks, memory, tools and usage: each a command on the bus, answered by its service."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.serving import auth, eventually
from tests.gateway.standins import World


async def task_of(http: httpx.AsyncClient, headers: dict[str, str], task_id: str) -> dict:
    return (await http.get(f"/v1/tasks/{task_id}", headers=headers)).json()


TASK = {"input": {"goal": "write a report"}}


@pytest.fixture
def member(member_key: str) -> dict[str, str]:
    return auth(member_key)


async def test_a_task_starts_waits_for_approval_and_completes_on_the_signal(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    created = await http.post(
        "/v1/tasks", headers=member, json={"input": {"goal": "a report", "require_approval": True}}
    )
    assert created.status_code == 202
    task = created.json()
    assert task["object"] == "task" and task["type"] == "agent_task"
    fetched = (await http.get(f"/v1/tasks/{task['id']}", headers=member)).json()
    assert fetched["state"] == "running"
    assert fetched["waiting_for"] == ["approve"]
    key_id = member["Authorization"].split("-")[2]
    # The gateway adds the caller's role and key: the task's model calls count against the key.
    assert fetched["input"] == {
        "goal": "a report",
        "require_approval": True,
        "role": "member",
        "key_id": key_id,
    }

    signalled = await http.post(
        f"/v1/tasks/{task['id']}/signal",
        headers=member,
        json={"name": "approve", "payload": {"approved": True, "by": "reviewer"}},
    )
    assert signalled.status_code == 202
    fetched = await eventually(
        lambda: task_of(http, member, task["id"]), lambda t: t["state"] == "completed"
    )
    assert fetched["state"] == "completed"
    assert fetched["result"] == {"approved_by": "reviewer"}
    again = await http.post(
        f"/v1/tasks/{task['id']}/signal", headers=member, json={"name": "approve"}
    )
    assert again.status_code == 409


async def test_a_cancelled_task_reports_cancelled(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    task = (await http.post("/v1/tasks", headers=member, json=TASK)).json()
    response = await http.post(
        f"/v1/tasks/{task['id']}/cancel", headers=member, json={"reason": "changed my mind"}
    )
    assert response.status_code == 202
    fetched = await eventually(
        lambda: task_of(http, member, task["id"]), lambda t: t["state"] == "cancelled"
    )
    assert fetched["state"] == "cancelled"
    assert fetched["error"] == "changed my mind"


async def test_tasks_are_listed_newest_first_and_filtered_by_state(
    http: httpx.AsyncClient, world: World
) -> None:
    headers = auth(world.identity.sign(world.identity.claims("lister", "u", ["member"])))
    ids = [
        (await http.post("/v1/tasks", headers=headers, json=TASK)).json()["id"] for _ in range(3)
    ]
    await http.post(f"/v1/tasks/{ids[0]}/cancel", headers=headers)
    await eventually(lambda: task_of(http, headers, ids[0]), lambda t: t["state"] == "cancelled")
    listed = (await http.get("/v1/tasks", headers=headers)).json()
    assert [t["id"] for t in listed["data"]] == ids[::-1]
    running = (await http.get("/v1/tasks?state=running", headers=headers)).json()
    assert [t["id"] for t in running["data"]] == ids[:0:-1]


async def test_a_task_id_chosen_by_the_caller_cannot_start_twice(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    body = {"id": "quarterly-report-7", **TASK}
    assert (await http.post("/v1/tasks", headers=member, json=body)).status_code == 202
    again = await http.post("/v1/tasks", headers=member, json=body)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"


async def test_an_unknown_task_is_404(http: httpx.AsyncClient, member: dict[str, str]) -> None:
    response = await http.get("/v1/tasks/nope", headers=member)
    assert response.status_code == 404


async def test_memory_is_added_searched_and_deleted(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    for text in ("the cat sleeps on the sofa", "quarterly revenue grew"):
        added = await http.post("/v1/memory", headers=member, json={"text": text})
        assert added.status_code == 201 and added.json()["created"]
    found = await http.post(
        "/v1/memory/search", headers=member, json={"query": "where does the cat sleep", "top_k": 1}
    )
    (hit,) = found.json()["data"]
    assert hit["text"] == "the cat sleeps on the sofa"
    deleted = await http.delete(f"/v1/memory/{hit['id']}", headers=member)
    assert deleted.json() == {"object": "memory.deleted", "deleted": 1}
    assert (await http.delete(f"/v1/memory/{hit['id']}", headers=member)).status_code == 404


async def test_adding_a_memory_twice_with_its_id_creates_it_once(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    body = {"id": "fact-1", "text": "water boils at 100 C"}
    assert (await http.post("/v1/memory", headers=member, json=body)).json()["created"] is True
    assert (await http.post("/v1/memory", headers=member, json=body)).json()["created"] is False


async def test_tools_are_listed_with_their_input_schema(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    tools = (await http.get("/v1/tools", headers=member)).json()["data"]
    add = next(t for t in tools if t["name"] == "add")
    assert add["input_schema"]["required"] == ["a", "b"]


async def test_a_tool_is_invoked_after_the_policy_allows_it(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    response = await http.post(
        "/v1/tools/add/invoke", headers=member, json={"arguments": {"a": 2, "b": 40}}
    )
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert response.json()["output"] == 42


async def test_a_tool_the_policy_denies_is_403_and_never_runs(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    response = await http.post(
        "/v1/tools/shell/invoke", headers=member, json={"arguments": {"cmd": "rm -rf /"}}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "policy_denied"
    assert "allow-list" in response.json()["error"]["message"]


async def test_usage_reports_the_tenants_chat_tokens(http: httpx.AsyncClient, world: World) -> None:
    identity = world.identity
    member = auth(identity.sign(identity.claims("metered", "u", ["member"])))
    admin = auth(identity.sign(identity.claims("metered", "boss", ["admin"])))
    body = {"model": "soma-test", "messages": [{"role": "user", "content": "count these words"}]}
    for _ in range(2):
        assert (await http.post("/v1/chat/completions", headers=member, json=body)).is_success

    async def report() -> list[dict]:
        return (await http.get("/v1/usage", headers=admin)).json()["data"]

    rows = await eventually(report, lambda rows: bool(rows) and rows[0]["requests"] == 2)
    assert rows == [
        {
            "group": {"model": "soma-test"},
            "requests": 2,
            "errors": 0,
            "prompt_tokens": 6,
            "completion_tokens": 8,
            "total_tokens": 14,
            "cost_usd": 0.0,
            "latency_ms_avg": 0.0,
        }
    ]


async def test_a_task_input_the_saga_would_refuse_is_400_naming_the_field(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    for task_input, param in (
        ({}, "input.goal"),
        ({"goal": 7}, "input.goal"),
        ({"goal": "x", "tools": [{"nam": "typo"}]}, "input.tools[0]"),
    ):
        response = await http.post("/v1/tasks", headers=member, json={"input": task_input})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


async def test_listing_tasks_in_a_state_that_does_not_exist_is_400_naming_the_states(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    answer = await http.get("/v1/tasks", headers=member, params={"state": "bogus"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "state"
    assert "choose from running, cancelling, completed, failed" in error["message"]


async def test_a_signal_a_task_never_waits_for_is_400_naming_the_signals(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    created = await http.post(
        "/v1/tasks", headers=member, json={"input": {"goal": "a report", "require_approval": True}}
    )
    answer = await http.post(
        f"/v1/tasks/{created.json()['id']}/signal", headers=member, json={"name": "aprove"}
    )
    assert answer.status_code == 400
    assert "choose from approve" in answer.json()["error"]["message"]


async def test_invoking_a_tool_that_does_not_exist_is_404(
    http: httpx.AsyncClient, member: dict[str, str]
) -> None:
    answer = await http.post(
        "/v1/tools/no-such-tool/invoke", headers=member, json={"arguments": {}}
    )
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("tool_not_found", "name")
    assert "GET /v1/tools" in error["message"]
