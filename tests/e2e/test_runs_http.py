"""/v1/runs on the real gateway with every process up: YAML or JSON in, steps out, gates."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from schemas.sagas import ENDED
from tests.e2e.test_gateway import gateway  # noqa: F401  (the gateway and identity processes)

RUN_YAML = """
goal: A short brief on saga engines
agents:
  - name: researcher
    role: You find facts.
  - name: writer
    role: You write for engineers.
steps:
  - id: research
    agent: researcher
    task: Collect the main facts
    max_steps: 1
  - id: write
    agent: writer
    task: Write the brief
    max_steps: 1
    gate: true
mode: sequential
"""


@pytest.fixture
def http(gateway: tuple[str, str]) -> Iterator[httpx.Client]:  # noqa: F811
    base, key = gateway
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        yield client


def until(http: httpx.Client, run_id: str, done: Callable[[dict[str, Any]], bool]) -> dict:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = http.get(f"/v1/runs/{run_id}").json()
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never got there: {run}")


def create_yaml(http: httpx.Client, text: str = RUN_YAML) -> httpx.Response:
    return http.post("/v1/runs", content=text, headers={"Content-Type": "application/yaml"})


def test_a_yaml_run_waits_at_its_gate_and_completes_when_approved(http: httpx.Client) -> None:
    created = create_yaml(http)
    assert created.status_code == 202, created.text
    run = created.json()
    assert run["object"] == "run" and run["goal"] == "A short brief on saga engines"
    assert [s["id"] for s in run["steps"]] == ["research", "write"]
    run = until(http, run["id"], lambda r: r["gate"] == "write")
    assert run["steps"][0]["state"] == "completed" and run["steps"][0]["output"]
    assert run["steps"][1]["state"] == "waiting"
    approved = http.post(f"/v1/runs/{run['id']}/signal", json={"approved": True})
    assert approved.status_code == 202
    run = until(http, run["id"], lambda r: r["state"] in ENDED)
    assert run["state"] == "completed", run["error"]
    assert run["report"] == run["steps"][1]["output"]
    assert run["steps"][1]["approved_by"]  # the caller's user id: the body cannot name one
    assert run["id"] in {r["id"] for r in http.get("/v1/runs").json()["data"]}


def test_a_run_rejected_at_its_gate_ends_compensated_with_the_comment(http: httpx.Client) -> None:
    run = create_yaml(http).json()
    until(http, run["id"], lambda r: r["gate"] == "write")
    rejected = http.post(
        f"/v1/runs/{run['id']}/signal", json={"approved": False, "comment": "off topic"}
    )
    assert rejected.status_code == 202
    run = until(http, run["id"], lambda r: r["state"] in ENDED)
    assert run["state"] == "compensated"
    assert run["error"].startswith("the gate before step write was rejected by ")
    assert run["error"].endswith(": off topic")


def test_a_gate_signal_to_a_run_not_at_a_gate_is_a_conflict(http: httpx.Client) -> None:
    run = create_yaml(http).json()
    until(http, run["id"], lambda r: r["gate"] == "write")
    http.post(f"/v1/runs/{run['id']}/signal", json={"approved": True})
    until(http, run["id"], lambda r: r["state"] in ENDED)
    again = http.post(f"/v1/runs/{run['id']}/signal", json={"approved": True})
    assert again.status_code == 409


def test_a_cancelled_run_is_compensated(http: httpx.Client) -> None:
    run = create_yaml(http).json()
    until(http, run["id"], lambda r: r["gate"] == "write")
    cancelled = http.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "not needed"})
    assert cancelled.status_code == 202
    run = until(http, run["id"], lambda r: r["state"] not in ("running", "cancelling"))
    assert run["state"] == "compensated" and run["error"] == "cancelled: not needed"


def _refused(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/runs", json=body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def _definition(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "goal": "g",
        "agents": [{"name": "a"}],
        "steps": [
            {"id": "one", "agent": "a", "task": "t"},
            {"id": "two", "agent": "a", "task": "t"},
        ],
    }
    body.update(changes)
    return body


def test_an_unknown_agent_is_refused_with_its_place(http: httpx.Client) -> None:
    error = _refused(http, _definition(steps=[{"id": "one", "agent": "nobody", "task": "t"}]))
    assert error["param"] == "steps[0].agent" and "unknown agent 'nobody'" in error["message"]


def test_a_cycle_is_refused_with_its_path(http: httpx.Client) -> None:
    steps = [
        {"id": "one", "agent": "a", "task": "t", "needs": ["two"]},
        {"id": "two", "agent": "a", "task": "t", "needs": ["one"]},
    ]
    error = _refused(http, _definition(steps=steps))
    assert error["param"] == "steps" and "cycle: one -> two -> one" in error["message"]


def test_a_missing_input_is_refused_with_what_to_change(http: httpx.Client) -> None:
    steps = [
        {"id": "one", "agent": "a", "task": "t"},
        {"id": "two", "agent": "a", "task": "t", "inputs": ["one"]},
    ]
    error = _refused(http, _definition(steps=steps))
    assert error["param"] == "steps[1].inputs[0]"
    assert "missing input" in error["message"] and "add it to needs" in error["message"]


def test_a_body_that_is_not_yaml_is_refused(http: httpx.Client) -> None:
    response = create_yaml(http, "goal: [unclosed")
    assert response.status_code == 400 and "not valid YAML" in response.json()["error"]["message"]
