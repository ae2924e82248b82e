"""Tasks and runs name registry tools by name on the real gateway, every process up: the gateway
asks the tools process for their specs before the saga starts, and refuses a name it lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, System
from tests.e2e.test_gateway import gateway  # noqa: F401  (the gateway and identity processes)
from tests.servers import create_key

OWN_SPEC = {
    "name": "lookup_order",
    "description": "Find an order by its id (run by the caller, not the platform)",
    "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
}


@pytest.fixture
def http(gateway: tuple[str, str]) -> Iterator[httpx.Client]:  # noqa: F811
    base, key = gateway
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(scope="module")
def registry(system: System, gateway: tuple[str, str]) -> dict[str, dict[str, Any]]:  # noqa: F811
    """Every registered tool, as ``GET /v1/tools`` lists them to an admin (a member's role may
    call none of them by the default policy, but may name them: policy judges each call)."""
    admin = create_key(system.env, "acme", "tools-admin", "admin")
    listed = httpx.get(f"{gateway[0]}/v1/tools", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200, listed.text
    return {t["name"]: t for t in listed.json()["data"]}


def test_a_task_naming_registry_tools_is_started_with_their_full_specs(
    http: httpx.Client, registry: dict[str, dict[str, Any]]
) -> None:
    created = http.post(
        "/v1/tasks",
        json={
            "input": {
                "goal": "What time is it, and 6*7?",
                "max_steps": 1,
                "tools": ["calculator", "current_time"],
            }
        },
    )

    assert created.status_code == 202, created.text
    stored = http.get(f"/v1/tasks/{created.json()['id']}").json()["input"]
    tools = registry
    assert stored["tools"] == []
    assert stored["platform_tools"] == [
        {"name": n, "description": tools[n]["description"], "parameters": tools[n]["input_schema"]}
        for n in ("calculator", "current_time")
    ]


def test_a_task_mixing_names_and_full_specs_keeps_the_specs_as_the_callers_own(
    http: httpx.Client,
) -> None:
    created = http.post(
        "/v1/tasks",
        json={
            "input": {"goal": "Check order 7", "max_steps": 1, "tools": [OWN_SPEC, "calculator"]}
        },
    )

    assert created.status_code == 202, created.text
    stored = http.get(f"/v1/tasks/{created.json()['id']}").json()["input"]
    assert [t["name"] for t in stored["tools"]] == ["lookup_order"]
    assert [t["name"] for t in stored["platform_tools"]] == ["calculator"]


def test_an_unknown_tool_name_is_404_naming_it_and_the_registrys_tools(
    http: httpx.Client, registry: dict[str, dict[str, Any]]
) -> None:
    refused = http.post(
        "/v1/tasks",
        json={"input": {"goal": "Go somewhere", "tools": ["calculator", "teleport"]}},
    )

    assert refused.status_code == 404, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("tool_not_found", "input.tools[1]")
    assert "No tool named 'teleport'" in error["message"]
    assert f"it holds: {', '.join(sorted(registry))}." in error["message"]


def test_a_run_whose_agent_names_a_registry_tool_carries_its_spec(
    http: httpx.Client, registry: dict[str, dict[str, Any]]
) -> None:
    created = http.post(
        "/v1/runs",
        json={
            "goal": "Add two numbers",
            "agents": [{"name": "counter", "role": "You add.", "tools": ["calculator"]}],
            "steps": [{"id": "add", "agent": "counter", "task": "Add 2 and 3", "max_steps": 1}],
        },
    )

    assert created.status_code == 202, created.text
    definition = http.get(f"/v1/runs/{created.json()['id']}").json()["definition"]
    assert [t["name"] for t in definition["platform_tools"]] == ["calculator"]
    assert definition["platform_tools"][0]["parameters"] == registry["calculator"]["input_schema"]


def test_a_run_whose_agent_names_an_unknown_tool_is_404_naming_the_place(
    http: httpx.Client,
) -> None:
    refused = http.post(
        "/v1/runs",
        json={
            "goal": "Go somewhere",
            "agents": [{"name": "pilot", "tools": ["teleport"]}],
            "steps": [{"id": "go", "agent": "pilot", "task": "Go"}],
        },
    )

    assert refused.status_code == 404, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("tool_not_found", "agents[0].tools[0]")
    assert "No tool named 'teleport'" in error["message"]


def _saga_cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soma.cli", "saga", *args],
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_soma_saga_start_of_a_task_naming_registry_tools_stores_their_full_specs(
    system: System, registry: dict[str, dict[str, Any]]
) -> None:
    goal = '{"goal": "6*7?", "max_steps": 1, "tools": ["calculator"]}'
    started = _saga_cli(system, "start", "agent_task", goal, "--tenant", "acme")
    assert started.returncode == 0, started.stderr

    shown = _saga_cli(system, "show", started.stdout.strip(), "--json")
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)["saga"]["input"]
    assert stored["tools"] == []
    assert stored["platform_tools"] == [
        {
            "name": "calculator",
            "description": registry["calculator"]["description"],
            "parameters": registry["calculator"]["input_schema"],
        }
    ]


def test_soma_saga_start_naming_an_unknown_tool_exits_2_naming_it_and_starts_nothing(
    system: System, registry: dict[str, dict[str, Any]]
) -> None:
    goal = '{"goal": "6*7?", "tools": ["abacus"]}'
    started = _saga_cli(system, "start", "agent_task", goal, "--tenant", "acme", "--id", "t-abacus")

    assert started.returncode == 2
    assert "abacus" in started.stderr and "calculator" in started.stderr
    assert "input.tools[0]" in started.stderr
    assert _saga_cli(system, "show", "t-abacus").returncode != 0
