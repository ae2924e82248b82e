"""How names in a task's or a run's tool lists become specs (the real gateway and tools process
are in tests/e2e/test_tools_by_name.py); the registry is a plain function of the test's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gateway.tool_names import UnknownTool, run_tools, task_tools
from schemas.tools import ToolDescriptor

TOOLS = {
    name: ToolDescriptor(name=name, description=f"the {name} tool", input_schema={"type": "object"})
    for name in ("calculator", "current_time", "github.list_issues", "github.get_issue")
}


class Registry:
    """The registry's tools, counting how often it was asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self) -> Mapping[str, ToolDescriptor]:
        self.asked += 1
        return TOOLS


def spec(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "parameters": {"type": "object"}}


def run(agent_tools: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "goal": "g",
        "agents": [{"name": "a", "tools": agent_tools}],
        "steps": [{"id": "s", "agent": "a", "task": "t"}],
        **extra,
    }


async def test_a_task_naming_no_tool_by_name_is_left_as_it_is_and_the_registry_unasked() -> None:
    registry = Registry()
    raw = {"goal": "g", "tools": [spec("mine")]}

    assert await task_tools(raw, registry) is raw
    assert registry.asked == 0


async def test_a_tool_named_twice_becomes_one_platform_tool() -> None:
    raw = {"goal": "g", "tools": ["calculator"], "platform_tools": ["calculator", spec("mine")]}

    resolved = await task_tools(raw, Registry())

    assert resolved["tools"] == []
    assert resolved["platform_tools"] == [spec("mine"), spec("calculator")]


async def test_an_unknown_platform_tool_name_names_its_place_and_the_known_tools() -> None:
    with pytest.raises(UnknownTool) as refused:
        await task_tools({"goal": "g", "platform_tools": [spec("x"), "nope"]}, Registry())

    assert refused.value.param == "input.platform_tools[1]"
    assert refused.value.known == sorted(TOOLS)


async def test_an_agents_glob_brings_every_registry_tool_it_matches() -> None:
    resolved = await run_tools(run(["github.*"]), Registry())

    assert resolved["platform_tools"] == [spec("github.get_issue"), spec("github.list_issues")]


async def test_an_agent_tool_the_run_already_specifies_needs_no_registry() -> None:
    registry = Registry()
    raw = run(["mine"], platform_tools=[spec("mine")])

    assert await run_tools(raw, registry) is raw
    assert registry.asked == 0


async def test_an_agent_pattern_matching_nothing_names_the_agent_and_the_pattern() -> None:
    with pytest.raises(UnknownTool) as refused:
        await run_tools(run(["calculator", "slack.*"]), Registry())

    assert (refused.value.name, refused.value.param) == ("slack.*", "agents[0].tools[1]")
