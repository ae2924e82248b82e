"""The registry and a call's checks: what the caller gets back when a call is wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jsonschema.exceptions import SchemaError

from handlers.tools.invocation import invoke
from handlers.tools.registry import (
    Annotations,
    Registry,
    Tool,
    ToolError,
    descriptors,
    unavailable,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city"],
    "additionalProperties": False,
}


def forecast_registry(ran: list[dict[str, Any]]) -> Registry:
    async def run(arguments: dict[str, Any]) -> dict[str, Any]:
        ran.append(arguments)
        if arguments["city"] == "Atlantis":
            raise ToolError("no weather station in Atlantis; try a real city", {"known": False})
        if arguments["city"] == "Crash":
            raise RuntimeError("station offline")
        return {"city": arguments["city"], "days": arguments.get("days", 1)}

    registry = Registry()
    registry.add(
        Tool(
            name="forecast",
            description="Weather forecast",
            input_schema=SCHEMA,
            output_schema={"type": "object"},
            annotations=Annotations(read_only=True, destructive=False, idempotent=True),
            run=run,
        )
    )
    registry.mark_unavailable("github.create_issue", "SOMA_GITHUB_TOKEN is not set")
    return registry


async def test_arguments_violating_the_schema_are_refused_before_the_tool_runs() -> None:
    ran: list[dict[str, Any]] = []
    result = await invoke(forecast_registry(ran), "c1", "forecast", {"city": 7, "days": 30})
    assert not result.ok
    assert ran == []
    assert result.error is not None
    assert "do not match its schema" in result.error
    assert "at arguments.city: 7 is not of type 'string'" in result.error
    assert "at arguments.days: 30 is greater than the maximum of 14" in result.error


async def test_missing_required_argument_is_named() -> None:
    result = await invoke(forecast_registry([]), "c1", "forecast", {})
    assert not result.ok
    assert "'city' is a required property" in (result.error or "")


async def test_unexpected_argument_is_named() -> None:
    result = await invoke(forecast_registry([]), "c1", "forecast", {"city": "Oslo", "unit": "C"})
    assert not result.ok
    assert "'unit' was unexpected" in (result.error or "")


async def test_valid_call_returns_the_output() -> None:
    result = await invoke(forecast_registry([]), "c1", "forecast", {"city": "Oslo", "days": 3})
    assert result.ok
    assert result.output == {"city": "Oslo", "days": 3}
    assert result.call_id == "c1" and result.name == "forecast"
    assert result.duration_ms >= 0


async def test_unknown_tool_lists_the_available_ones() -> None:
    result = await invoke(forecast_registry([]), "c1", "forcast", {})
    assert not result.ok
    assert result.error == "no tool named 'forcast'; available tools: forecast"


async def test_unavailable_tool_says_why() -> None:
    result = await invoke(forecast_registry([]), "c1", "github.create_issue", {})
    assert not result.ok
    assert result.error == (
        "tool 'github.create_issue' is unavailable: SOMA_GITHUB_TOKEN is not set"
    )


async def test_tool_error_keeps_its_message_and_output() -> None:
    result = await invoke(forecast_registry([]), "c1", "forecast", {"city": "Atlantis"})
    assert not result.ok
    assert result.error == "no weather station in Atlantis; try a real city"
    assert result.output == {"known": False}


async def test_unexpected_exception_becomes_an_error_result() -> None:
    result = await invoke(forecast_registry([]), "c1", "forecast", {"city": "Crash"})
    assert not result.ok
    assert result.error == "'forecast' failed: RuntimeError: station offline"


async def test_tool_running_past_its_timeout_is_an_error_result() -> None:
    async def slow(arguments: dict[str, Any]) -> None:
        await asyncio.sleep(5)

    registry = Registry()
    registry.add(Tool("slow", "", {"type": "object"}, slow, timeout=0.1))
    result = await invoke(registry, "c1", "slow", {})
    assert not result.ok
    assert result.error == "'slow' did not finish within 0.1 s"


def test_descriptors_have_the_mcp_shape() -> None:
    [described] = descriptors(forecast_registry([]))
    assert described == {
        "name": "forecast",
        "description": "Weather forecast",
        "inputSchema": SCHEMA,
        "outputSchema": {"type": "object"},
        "annotations": {
            "readOnlyHint": True,
            "destructiveHint": False,
            "idempotentHint": True,
            "openWorldHint": True,
        },
    }


def test_unavailable_tools_are_listed_apart_with_the_reason() -> None:
    registry = forecast_registry([])
    assert [d["name"] for d in descriptors(registry)] == ["forecast"]
    assert unavailable(registry) == [
        {"name": "github.create_issue", "reason": "SOMA_GITHUB_TOKEN is not set"}
    ]


def test_a_tool_with_an_invalid_schema_is_refused_at_registration() -> None:
    async def run(arguments: dict[str, Any]) -> None:
        return None

    with pytest.raises(SchemaError):
        Tool("broken", "", {"type": "objekt"}, run)


def test_two_tools_cannot_share_a_name() -> None:
    registry = forecast_registry([])
    with pytest.raises(ValueError, match="already registered"):
        registry.add(registry.tools["forecast"])
